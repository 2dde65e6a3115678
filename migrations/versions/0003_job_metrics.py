"""job metrics: the numbers runs are sorted by (final losses, the latest scorecard)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_metrics',
    sa.Column('job_id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('source_id', sa.String(length=36), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('job_id', 'name')
    )
    op.create_index('ix_job_metrics_name_value', 'job_metrics', ['name', 'value'], unique=False)
    backfill_final_losses()


def backfill_final_losses() -> None:
    """Succeeded train jobs from before this table get their final losses (their progress holds the last epoch)."""
    import math

    jobs = sa.table('jobs', sa.column('id', sa.String), sa.column('kind', sa.String),
                    sa.column('state', sa.String), sa.column('progress', sa.JSON))
    metrics = sa.table('job_metrics', sa.column('job_id', sa.String), sa.column('name', sa.String),
                       sa.column('value', sa.Float), sa.column('source_id', sa.String))
    bind = op.get_bind()
    rows = []
    for job_id, progress in bind.execute(sa.select(jobs.c.id, jobs.c.progress)
                                         .where(jobs.c.kind == 'train', jobs.c.state == 'succeeded')):
        for name, value in (progress or {}).items():
            if name not in ('epoch', 'total', 'history') and isinstance(value, (int, float)) \
                    and not isinstance(value, bool) and math.isfinite(value):
                rows.append({'job_id': job_id, 'name': name, 'value': float(value), 'source_id': job_id})
    if rows:
        op.bulk_insert(metrics, rows)


def downgrade() -> None:
    op.drop_index('ix_job_metrics_name_value', table_name='job_metrics')
    op.drop_table('job_metrics')
