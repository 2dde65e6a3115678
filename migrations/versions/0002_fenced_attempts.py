"""fenced attempts: a lease per claim, the resume pointer, a change counter, crash reasons, leases

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        # Fencing token: +1 on every claim; every write of an attempt is checked against it.
        batch_op.add_column(sa.Column('lease', sa.Integer(), nullable=False, server_default='0'))
        # +1 on every change of the row: progress streams poll this cheap column.
        batch_op.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))
        # The newest resume state written by an attempt that owned the job when it wrote it.
        batch_op.add_column(sa.Column('checkpoint', sa.JSON(), nullable=True))
        # Why the last attempt ended without finishing (worker crash, hand-over), for users.
        batch_op.add_column(sa.Column('last_interruption', sa.Text(), nullable=True))
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dropped_messages', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('draining', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_table('leases',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('holder', sa.String(length=255), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('leases')
    with op.batch_alter_table('workers', schema=None) as batch_op:
        batch_op.drop_column('draining')
        batch_op.drop_column('dropped_messages')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('last_interruption')
        batch_op.drop_column('checkpoint')
        batch_op.drop_column('revision')
        batch_op.drop_column('lease')
