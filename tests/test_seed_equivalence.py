"""The seed preset reproduces the notebook: same batches, same initialisation, same losses."""

import torch
from torch.utils.data import DataLoader

from shared.specs import TrainSpec
from tests.notebook import notebook_run, seed_notebook
from worker.models import ModelConfig
from worker.train import dataloader_permutation, images_to_tensor, new_state, train

N_TRAIN, N_TEST, EPOCHS = 10_000, 2_000, 3  # 10,000 = 39 full batches + one of 16


def test_epoch_orders_match_dataloader_exactly():
    n = 1000
    seed_notebook(47)
    loader = DataLoader(range(n), batch_size=256, shuffle=True)
    reference = [torch.cat(list(loader)) for _ in range(4)]
    seed_notebook(47)
    ours = [dataloader_permutation(n) for _ in range(4)]
    for ref, mine in zip(reference, ours):
        assert torch.equal(ref, mine)
    # ...and the global generator is left in the same state afterwards.
    seed_notebook(47)
    for _ in range(4):
        list(DataLoader(range(n), batch_size=256, shuffle=True))
    after_loader = torch.rand(3)
    seed_notebook(47)
    for _ in range(4):
        dataloader_permutation(n)
    assert torch.equal(after_loader, torch.rand(3))


def test_seed_preset_matches_the_notebook_loop(torchvision_root, mnist_train, mnist_test):
    initial = {}
    reference, notebook_model = notebook_run(
        torchvision_root, EPOCHS, N_TRAIN, N_TEST,
        on_model=lambda m: initial.update({k: v.clone() for k, v in m.state_dict().items()}),
    )

    spec = TrainSpec.from_dict({"preset": "seed", "epochs": EPOCHS, "device": "cpu"})
    state = new_state(spec, ModelConfig(), torch.device("cpu"))
    for name, value in state.model.state_dict().items():
        assert torch.equal(value, initial[name]), name
    train_x = images_to_tensor(mnist_train, torch.device("cpu"))[:N_TRAIN]
    test_x = images_to_tensor(mnist_test, torch.device("cpu"))[:N_TEST]
    train(spec, state, train_x, test_x)

    assert len(state.history) == EPOCHS
    for (ref_train, ref_test, _), ours in zip(reference, state.history):
        assert abs(ours.train_loss - ref_train) <= 2e-4, (ours.epoch, ours.train_loss, ref_train)
        assert abs(ours.test_loss - ref_test) <= 2e-4, (ours.epoch, ours.test_loss, ref_test)
        # The 4-decimal values the notebook prints agree too (or sit on a rounding edge).
        assert abs(round(ours.train_loss, 4) - round(ref_train, 4)) <= 1e-4
    # Beyond the tolerance the issue asks for: the same arithmetic in the same
    # order, so the trained weights are bit for bit the notebook's.
    for name, value in state.model.state_dict().items():
        assert torch.equal(value, notebook_model.state_dict()[name]), name
    # Training did something: the loss fell from epoch 1 to 3.
    assert state.history[-1].train_loss < state.history[0].train_loss - 0.005


def test_images_to_tensor_equals_to_tensor_transform(mnist_test):
    from PIL import Image
    from torchvision import transforms

    ours = images_to_tensor(mnist_test, torch.device("cpu"))[:50]
    to_tensor = transforms.ToTensor()
    theirs = torch.stack([to_tensor(Image.fromarray(img, mode="L")).view(-1) for img in mnist_test.images[:50]])
    assert torch.equal(ours, theirs)
