import pytest
import torch

from lfvila_model.modules.attention import (
    WindowAttentionBlock,
    effective_window,
    shifted_window_mask,
    window_partition,
    window_reverse,
)
from lfvila_model.modules.patch import PatchEmbed3D, PatchMerging


def test_partition_reverse_round_trip():
    x = torch.randn(2, 4, 6, 10, 3)
    windows = window_partition(x, (2, 3, 5))
    assert windows.shape == (2, 2 * 2 * 2, 30, 3)
    assert torch.equal(window_reverse(windows, (2, 3, 5), (4, 6, 10)), x)
    # The first window holds exactly the tokens of the first (2, 3, 5) box.
    assert torch.equal(windows[0, 0], x[0, :2, :3, :5].reshape(30, 3))


def test_effective_window_clamps_and_drops_shift():
    assert effective_window((32, 3, 5), (8, 3, 5), (0, 1, 2)) == ((8, 3, 5), (0, 0, 0))
    assert effective_window((4, 6, 10), (8, 3, 5), (0, 1, 2)) == ((4, 3, 5), (0, 1, 2))
    assert effective_window((4, 6, 10), None, (0, 1, 2)) == ((4, 6, 10), (0, 0, 0))


def test_unshifted_unpadded_needs_no_mask():
    assert shifted_window_mask((4, 6, 6), (2, 3, 3), (0, 0, 0)) is None


def _interacting_pairs(grid, window, shift):
    """Brute force in original coordinates: same window of the grid offset by the shift."""
    t, h, w = grid
    coords = [(a, b, c) for a in range(t) for b in range(h) for c in range(w)]
    cell = [(a // window[0], (b - shift[1]) // window[1], (c - shift[2]) // window[2]) for a, b, c in coords]
    n = len(coords)
    return torch.tensor([[cell[i] == cell[j] for j in range(n)] for i in range(n)])


@pytest.mark.parametrize("shift", [False, True])
def test_tokens_never_attend_across_window_or_shift_boundary(shift):
    grid, window = (2, 6, 6), (2, 3, 3)
    block = WindowAttentionBlock(8, 2, window, shift=shift, rel_pos_bias=True).eval()
    x = torch.randn(1, *grid, 8)
    # Jacobian of the attention branch: output token i depends on input token j iff they interact.
    jac = torch.autograd.functional.jacobian(lambda inp: block._attend(inp), x)  # 1×T×H×W×C×1×T×H×W×C
    n = 2 * 6 * 6
    dep = jac.reshape(n, 8, n, 8).abs().sum((1, 3)) > 0
    expected = _interacting_pairs(grid, window, block.shift)
    assert block.shift == ((0, 1, 1) if shift else (0, 0, 0))
    assert torch.equal(dep, expected)


def test_padding_is_masked_and_cropped():
    block = WindowAttentionBlock(8, 2, (2, 3, 5), shift=True).eval()
    x = torch.randn(2, 3, 4, 7, 8)  # no dimension is a multiple of the window
    out = block(x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_padded_keys_do_not_leak_into_real_tokens():
    # Width 7 with window 5: the second window holds 2 real columns and 3 padded ones.
    # Its outputs must equal the block run on those 2 columns alone (window clamped, no pad).
    block = WindowAttentionBlock(8, 2, (1, 3, 5), shift=False).eval()
    x = torch.randn(1, 1, 3, 7, 8)
    with torch.no_grad():
        full = block(x)
        alone = block(x[:, :, :, 5:].contiguous())
    torch.testing.assert_close(full[:, :, :, 5:], alone)


def test_block_shapes_and_grad():
    block = WindowAttentionBlock(16, 4, (2, 3, 5), shift=True, drop_path=0.1)
    x = torch.randn(2, 4, 6, 10, 16, requires_grad=True)
    block(x).sum().backward()
    assert x.grad.shape == x.shape
    assert block.attn.relative_position_bias_table.grad is not None


def test_patch_embed_and_merging_shapes():
    embed = PatchEmbed3D((1, 8, 8), 3, 16)
    tokens = embed(torch.randn(2, 4, 3, 40, 60))  # 60 is padded to 64
    assert tokens.shape == (2, 4, 5, 8, 16)
    merged = PatchMerging(16)(tokens)  # 5 is padded to 6
    assert merged.shape == (2, 4, 3, 4, 32)
