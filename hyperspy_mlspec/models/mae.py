"""Masked autoencoder for 1-D spectra (after He et al. 2022, "Masked Autoencoders Are
Scalable Vision Learners"), and LoRA adapters for its attention projections.

A spectrum of ``n_channels`` bins is cut into patches of ``patch_size`` bins. During
pretraining a random ``mask_ratio`` of the patches is hidden (a fresh random set for every
spectrum: argsort of uniform noise); the encoder sees only the visible patches, a lighter
decoder sees the encoder outputs plus a learnt mask token at every hidden position and
predicts the bins of the hidden patches. The loss is the mean squared error on hidden bins
only. Positions are fixed sine-cosine embeddings.

The downstream embedding of a spectrum pools the encoder outputs of all patches, nothing
masked (no CLS token: it keeps the encoder input exactly the pretraining one).
``pooling="segments"`` (default) averages the tokens within ``n_segments`` contiguous groups
of patches and concatenates the group means (``n_segments * embed_dim`` features);
``pooling="mean"`` averages over all patches (``embed_dim`` features, the MAE paper's
linear-probe pooling for images). In a spectrum *where* a feature sits is physics: a 1.5 eV
chemical shift tells Fe2+ from Fe3+, and a peak area is read at a known energy. The global
mean keeps only what the position embeddings left of that in the token values, and a linear
probe on it lost 8 accuracy and 30 R^2 points against segment pooling of the same encoder
in ``benchmarks/bench_mae.py``.

Torch only: spectra arrive already resampled onto ``n_channels`` bins; the per-spectrum
normalisation (``input_transform``) is part of the module so every path (pretraining,
embedding, LoRA fine-tuning) sees the same input.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

INPUT_TRANSFORMS = ("log", "standard")
POOLINGS = ("segments", "mean")
DEFAULT_SEGMENTS = 8  # with "auto": at most 8 segments (64 patches -> 8 of 8 patches)


def resolve_segments(n_segments: int | str, n_patches: int) -> int:
    """Number of pooling segments for ``n_patches`` patches (``"auto"``: 8, or
    ``n_patches`` when fewer), checked.

    Examples
    --------
    >>> resolve_segments("auto", 64), resolve_segments("auto", 4), resolve_segments(5, 64)
    (8, 4, 5)
    """
    if n_segments == "auto":
        return min(DEFAULT_SEGMENTS, n_patches)
    if isinstance(n_segments, bool) or not isinstance(n_segments, numbers.Integral) \
            or n_segments < 1:
        raise ValueError(f"n_segments must be a positive integer or 'auto', got {n_segments!r}")
    if n_segments > n_patches:
        raise ValueError(f"n_segments={n_segments} exceeds the {n_patches} patches of the "
                         "model: a segment needs at least one patch. Use n_segments <= "
                         f"{n_patches}, or 'auto'.")
    return int(n_segments)


def segment_weights(n_patches: int, n_segments: int) -> torch.Tensor:
    """``(n_segments, n_patches)`` averaging matrix of contiguous patch groups.

    Patch ``i`` belongs to segment ``floor(i * n_segments / n_patches)``: equal groups when
    ``n_segments`` divides ``n_patches``, else groups whose sizes differ by at most one.
    Each row sums to 1.

    Examples
    --------
    >>> segment_weights(5, 2).sum(1)
    tensor([1., 1.])
    >>> (segment_weights(5, 2) > 0).sum(1)
    tensor([3, 2])
    """
    seg = torch.arange(n_patches) * n_segments // n_patches
    w = F.one_hot(seg, n_segments).T.float()
    return w / w.sum(1, keepdim=True)


def sincos_embedding(n_positions: int, dim: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position embedding of shape ``(n_positions, dim)``.

    Examples
    --------
    >>> sincos_embedding(64, 32).shape
    torch.Size([64, 32])
    """
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / max(half, 1))
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * omega[None, :]
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if emb.shape[1] < dim:  # odd width: pad one zero column
        emb = F.pad(emb, (0, dim - emb.shape[1]))
    return emb.float()


def standardize_spectra(x: torch.Tensor, kind: str = "log") -> torch.Tensor:
    """Per-spectrum normalisation of ``(n, channels)`` rows.

    ``"log"``: ``log1p`` of the (non-negative) counts, then subtract the spectrum's mean and
    divide by its standard deviation. Counts spectra span decades (EELS power-law
    backgrounds, EDS peaks over bremsstrahlung) and thickness/dose multiply a spectrum:
    in log space a multiplicative factor is an offset, removed by the mean subtraction,
    and small edges remain visible next to a large background. Negative values (e.g. after
    background subtraction) are clipped to 0 first. ``"standard"``: subtract mean, divide
    by standard deviation (any real-valued spectra, e.g. baseline-corrected Raman).

    Examples
    --------
    >>> x = torch.rand(3, 16) * 100 + 100
    >>> y = standardize_spectra(x, "log")
    >>> bool(torch.allclose(y, standardize_spectra(x * 7, "log"), atol=0.05))
    True
    """
    if kind == "log":
        x = torch.log1p(x.clamp_min(0))
    elif kind != "standard":
        raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}, got {kind!r}")
    mean = x.mean(1, keepdim=True)
    std = x.std(1, keepdim=True, unbiased=False)
    return (x - mean) / (std + 1e-6)


class Attention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``out`` projections
    (so LoRA can wrap any of them) and ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by the number of heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.heads

        def split(z):
            return z.view(n, t, h, d // h).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(y.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MaskedSpectrumTransformer(nn.Module):
    """1-D masked autoencoder (see the module docstring).

    Parameters
    ----------
    n_channels
        Bins per spectrum; a multiple of ``patch_size``.
    patch_size
        Bins per patch (token).
    embed_dim, depth, heads
        Encoder width, number of blocks and attention heads.
    decoder_dim, decoder_depth, decoder_heads
        The same for the (lighter) decoder.
    mask_ratio
        Fraction of patches hidden during pretraining.
    norm_pix_loss
        Predict per-patch standardised targets (mean 0, variance 1 within each patch).
    input_transform
        ``"log"`` or ``"standard"`` (see :func:`standardize_spectra`).
    pooling
        How :meth:`embed` pools the encoder tokens: ``"segments"`` (mean per contiguous
        group of patches, concatenated: keeps where along the energy axis a feature is) or
        ``"mean"`` (over all patches). See the module docstring.
    n_segments
        Groups of ``"segments"`` pooling, or ``"auto"`` (8, fewer when the model has fewer
        patches); ignored for ``"mean"``.

    Examples
    --------
    >>> m = MaskedSpectrumTransformer(256, 16, embed_dim=32, depth=1, heads=2,
    ...                               decoder_dim=16, decoder_depth=1, decoder_heads=2)
    >>> loss, pred, mask = m(torch.rand(4, 256))
    >>> pred.shape, mask.shape, m.embed(torch.rand(4, 256)).shape
    (torch.Size([4, 16, 16]), torch.Size([4, 16]), torch.Size([4, 256]))
    """

    def __init__(self, n_channels: int = 2048, patch_size: int = 32, *, embed_dim: int = 128,
                 depth: int = 4, heads: int = 4, decoder_dim: int = 64, decoder_depth: int = 2,
                 decoder_heads: int = 4, mlp_ratio: float = 4.0, mask_ratio: float = 0.75,
                 norm_pix_loss: bool = False, input_transform: str = "log",
                 pooling: str = "segments", n_segments: int | str = "auto") -> None:
        super().__init__()
        if n_channels % patch_size:
            raise ValueError(f"n_channels={n_channels} is not a multiple of "
                             f"patch_size={patch_size}")
        if input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform must be one of {INPUT_TRANSFORMS}, "
                             f"got {input_transform!r}")
        self.n_channels, self.patch_size = n_channels, patch_size
        self.n_patches = n_channels // patch_size
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self.input_transform = input_transform
        self.embed_dim = embed_dim
        self.set_pooling(pooling, n_segments)
        self.patch_embed = nn.Linear(patch_size, embed_dim)
        self.register_buffer("pos_embed", sincos_embedding(self.n_patches, embed_dim)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed",
                             sincos_embedding(self.n_patches, decoder_dim)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, mlp_ratio)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_pooling(self, pooling: str, n_segments: int | str = "auto") -> None:
        """Choose the pooling of :meth:`embed` (no weights depend on it, so a pretrained
        encoder can be pooled either way)."""
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.n_segments = (resolve_segments(n_segments, self.n_patches)
                           if pooling == "segments" else 1)
        self.register_buffer("segment_weights",
                             segment_weights(self.n_patches, self.n_segments), persistent=False)

    @property
    def embedding_dim(self) -> int:
        """Features per spectrum of :meth:`embed`: ``n_segments * embed_dim``."""
        return self.n_segments * self.embed_dim

    # -- pieces -----------------------------------------------------------------------------
    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised spectra (see :func:`standardize_spectra`)."""
        return standardize_spectra(x, self.input_transform)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, channels)`` -> ``(n, n_patches, patch_size)``."""
        return x.reshape(x.shape[0], self.n_patches, self.patch_size)

    def random_masking(self, tokens: torch.Tensor, mask_ratio: float):
        """Keep a random ``1 - mask_ratio`` of the tokens of each spectrum.

        Returns ``(kept tokens, mask, ids_restore)``; ``mask`` is 1 on hidden patches, in
        the original patch order.
        """
        n, t, d = tokens.shape
        n_keep = max(1, int(round(t * (1 - mask_ratio))))
        noise = torch.rand(n, t, device=tokens.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :n_keep]
        kept = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, d))
        mask = torch.ones(n, t, device=tokens.device)
        mask[:, :n_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    def encode_tokens(self, xn: torch.Tensor, mask_ratio: float = 0.0):
        """Encoder outputs of normalised spectra: ``(latent, mask, ids_restore)``."""
        tokens = self.patch_embed(self.patchify(xn)) + self.pos_embed
        if mask_ratio > 0:
            tokens, mask, ids_restore = self.random_masking(tokens, mask_ratio)
        else:
            mask = torch.zeros(tokens.shape[:2], device=tokens.device)
            ids_restore = None
        for blk in self.blocks:
            tokens = blk(tokens)
        return self.norm(tokens), mask, ids_restore

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted bins of every patch, ``(n, n_patches, patch_size)``."""
        y = self.decoder_embed(latent)
        n, k, d = y.shape
        fill = self.mask_token.expand(n, self.n_patches - k, d)
        y = torch.cat([y, fill], dim=1)
        y = torch.gather(y, 1, ids_restore[..., None].expand(-1, -1, d))
        y = y + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            y = blk(y)
        return self.decoder_pred(self.decoder_norm(y))

    def loss(self, xn: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error over the bins of hidden patches only."""
        target = self.patchify(xn)
        if self.norm_pix_loss:
            mean = target.mean(-1, keepdim=True)
            var = target.var(-1, keepdim=True, unbiased=False)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)

    # -- public ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, mask_ratio: float | None = None):
        """Pretraining pass on raw spectra: ``(loss, prediction, mask)``."""
        xn = self.prepare(x)
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.encode_tokens(xn, ratio)
        if ids_restore is None:
            ids_restore = torch.arange(self.n_patches, device=x.device).expand(len(x), -1)
        pred = self.decode(latent, ids_restore)
        return self.loss(xn, pred, mask), pred, mask

    def pool(self, latent: torch.Tensor) -> torch.Tensor:
        """``(n, n_patches, embed_dim)`` tokens -> ``(n, embedding_dim)``: the mean of each
        segment's tokens, segment after segment (``"mean"`` pooling is one segment)."""
        w = self.segment_weights.to(latent)
        return torch.einsum("sp,npd->nsd", w, latent).reshape(len(latent), -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Embedding of raw spectra: the encoder outputs, nothing masked, pooled by
        :meth:`pool`."""
        latent, _, _ = self.encode_tokens(self.prepare(x), 0.0)
        return self.pool(latent)


# -- LoRA -----------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021).

    ``y = base(x) + (alpha / r) * x A^T B^T`` with ``A`` of shape ``(r, in)`` (Kaiming
    uniform) and ``B`` of shape ``(out, r)`` initialised to zero, so the adapted layer equals
    the base layer until ``B`` is trained. :meth:`merge` folds the update into the base
    weight (no extra cost at inference), :meth:`unmerge` takes it out again.

    Examples
    --------
    >>> base = nn.Linear(8, 8)
    >>> lora = LoRALinear(base, r=2)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.equal(lora(x), base(x)))
    True
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__}")
        if r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {r}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = int(r), float(alpha)
        self.scaling = self.alpha / self.r
        self.lora_A = nn.Parameter(torch.empty(self.r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, self.r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def delta(self) -> torch.Tensor:
        """The weight update ``(alpha / r) B A``."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


LORA_TARGETS = ("q", "k", "v", "out")


def inject_lora(model: nn.Module, r: int = 4, alpha: float = 8.0,
                targets: tuple[str, ...] = ("q", "v")) -> list[LoRALinear]:
    """Freeze ``model`` and wrap the ``targets`` projections of every :class:`Attention`
    in it with :class:`LoRALinear` (in place). Only the LoRA parameters stay trainable.

    Returns
    -------
    list of LoRALinear
        The adapters, in module order.

    Examples
    --------
    >>> m = nn.Sequential(Block(16, 2))
    >>> adapters = inject_lora(m, r=2)
    >>> len(adapters), sum(p.numel() for p in m.parameters() if p.requires_grad)
    (2, 128)
    """
    bad = set(targets) - set(LORA_TARGETS)
    if bad or not targets:
        raise ValueError(f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, "
                         f"got {tuple(targets)}")
    for p in model.parameters():
        p.requires_grad_(False)
    adapters = []
    for attn in [m for m in model.modules() if isinstance(m, Attention)]:
        for name in targets:
            layer = getattr(attn, name)
            if isinstance(layer, LoRALinear):
                raise ValueError("the model already holds LoRA adapters")
            wrapped = LoRALinear(layer, r, alpha)
            setattr(attn, name, wrapped)
            adapters.append(wrapped)
    return adapters


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    """The :class:`LoRALinear` layers of ``model``."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (faster inference; see :meth:`LoRALinear.merge`)."""
    for layer in lora_layers(model):
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model):
        layer.unmerge()
