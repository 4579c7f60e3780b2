"""SAM's mask decoder: output tokens + prompt tokens run through the two-way transformer, then hypernetwork heads.

Names (``iou_token``, ``mask_tokens``, ``output_upscaling.{0,1,3}``, ``output_hypernetworks_mlps.{i}.layers.{j}``,
``iou_prediction_head.layers.{j}``, ``transformer.*``) match Meta's ``MaskDecoder``.
"""
from __future__ import annotations

import numbers
from typing import Union

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from .transformer import TwoWayTransformer, eager_inference, inference_folds, shortcuts_allowed

MultimaskOutput = Union[bool, int]


class MLP(nn.Module):
    """``num_layers`` Linear layers (``layers`` ModuleList) with ReLU between them; optional sigmoid on the output."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"MLP: num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        widths = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:]))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predicts mask logits and IoU scores from an image embedding and prompt embeddings.

    There are ``num_multimask_outputs + 1`` mask tokens (4 in SAM): token 0 is the single-mask output, tokens 1..3
    the disambiguating multimask outputs.

    Args:
        transformer_dim: channel width of tokens and image embedding (256).
        transformer: the :class:`TwoWayTransformer`.
        num_multimask_outputs: number of disambiguating masks (3).
        activation: activation of the upscaling path.
        iou_head_depth / iou_head_hidden_dim: the IoU-prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def output_slice(self, multimask_output: MultimaskOutput) -> slice:
        """Which mask tokens to return.

        bool (SAM): True → tokens 1..3, False → token 0. int (EdgeSAM/PowerSAM): 1 → token 0,
        ``num_multimask_outputs`` (3) → tokens 1..3, ``num_mask_tokens`` (4) → all tokens. Else: ValueError.
        """
        if isinstance(multimask_output, bool):
            return slice(1, None) if multimask_output else slice(0, 1)
        if isinstance(multimask_output, numbers.Integral):
            count = int(multimask_output)
            if count == 1:
                return slice(0, 1)
            if count == self.num_multimask_outputs:
                return slice(1, None)
            if count == self.num_mask_tokens:
                return slice(0, None)
        raise ValueError(
            f"MaskDecoder: multimask_output must be a bool or one of the ints "
            f"{sorted({1, self.num_multimask_outputs, self.num_mask_tokens})}, got {multimask_output!r}"
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: MultimaskOutput,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks for B prompts.

        Args:
            image_embeddings: 1×C×h×w (one image shared by all B prompts, broadcast as SAM does) or B×C×h×w
                (one embedding per prompt, e.g. a training batch mixing images). Note: SAM would repeat a B×C×h×w
                input B times each; here a batch equal to B always means "one per prompt".
            image_pe: 1×C×h×w (or B×C×h×w) positional encoding, ``PromptEncoder.get_dense_pe()``.
            sparse_prompt_embeddings: B×K×C point/box tokens (K may be 0).
            dense_prompt_embeddings: B×C×h×w (or 1×C×h×w) mask embedding.
            multimask_output: see :meth:`output_slice`.
        Returns:
            masks: B×M×4h×4w low-res mask logits (M = 1, 3 or 4).
            iou_pred: B×M predicted mask IoU.
        """
        return self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            token_slice=self.output_slice(multimask_output),
        )

    def _check_inputs(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> None:
        dim = self.transformer_dim
        if sparse_prompt_embeddings.ndim != 3 or sparse_prompt_embeddings.shape[-1] != dim:
            raise ValueError(
                f"MaskDecoder: sparse_prompt_embeddings must be B×K×{dim}, "
                f"got shape {tuple(sparse_prompt_embeddings.shape)}"
            )
        num_prompts = sparse_prompt_embeddings.shape[0]
        if image_embeddings.ndim != 4 or image_embeddings.shape[1] != dim:
            raise ValueError(
                f"MaskDecoder: image_embeddings must be 1×{dim}×h×w or B×{dim}×h×w, "
                f"got shape {tuple(image_embeddings.shape)}"
            )
        grid = tuple(image_embeddings.shape[2:])
        for name, tensor in (
            ("image_embeddings", image_embeddings),
            ("image_pe", image_pe),
            ("dense_prompt_embeddings", dense_prompt_embeddings),
        ):
            if tensor.ndim != 4 or tensor.shape[0] not in (1, num_prompts) or tuple(tensor.shape[1:]) != (dim, *grid):
                raise ValueError(
                    f"MaskDecoder: {name} must be 1×{dim}×{grid[0]}×{grid[1]} or {num_prompts}×{dim}×{grid[0]}×"
                    f"{grid[1]} (B = {num_prompts} prompts), got shape {tuple(tensor.shape)}"
                )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        token_slice: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder and return the mask tokens ``token_slice`` (default all): (B×M×4h×4w logits, B×M IoU).

        Shapes as in :meth:`forward`. Only the returned tokens' masks are computed: a box prompt's single mask
        skips three quarters of the hypernetwork product and of the final rearrangement (4h×4w per token).
        """
        self._check_inputs(image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings)
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        # The image side stays one 1×C×h×w tensor while it is the same for every prompt (a shared embedding and
        # the no-mask dense embedding, which the prompt encoder returns as a stride-0 view): the transformer then
        # computes what depends on it alone once, not once per prompt (see TwoWayTransformer.forward).
        if dense_prompt_embeddings.shape[0] > 1 and dense_prompt_embeddings.stride(0) == 0:
            dense_prompt_embeddings = dense_prompt_embeddings[:1]
        src = image_embeddings + dense_prompt_embeddings
        _, channels, height, width = src.shape

        # Inference computes only the returned tokens' masks. Training keeps every token in the graph: DDP needs
        # each parameter used, and the optimiser then sees the zero gradients SAM's decoder gives it.
        computed = token_slice if not torch.is_grad_enabled() and shortcuts_allowed() else slice(None)
        wanted = range(self.num_mask_tokens)[computed]
        if inference_folds() and isinstance(self.transformer, TwoWayTransformer):
            # the IoU token and the wanted mask tokens alone through the final attention (each token attends on
            # its own there): for a box prompt's single mask 2 of its 7 tokens
            hs, src = self.transformer(src, image_pe, tokens, final_tokens=[0, *(1 + i for i in wanted)])
            iou_token_out, mask_tokens_out = hs[:, 0, :], {i: hs[:, 1 + k, :] for k, i in enumerate(wanted)}
        else:
            hs, src = self.transformer(src, image_pe, tokens)
            iou_token_out, mask_tokens_out = hs[:, 0, :], {i: hs[:, 1 + i, :] for i in wanted}
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[i]) for i in wanted], dim=1
        )  # B×M×C/8
        if self._upscaling_is_sams():
            masks = self._masks_channels_last(src, hyper_in, height, width)
        else:
            src = src.transpose(1, 2).reshape(num_prompts, channels, height, width)
            upscaled = self.output_upscaling(src)  # B×C/8×4h×4w
            batch, up_channels, up_height, up_width = upscaled.shape
            masks = (hyper_in @ upscaled.reshape(batch, up_channels, up_height * up_width)).reshape(
                batch, len(wanted), up_height, up_width
            )
        iou_pred = self.iou_prediction_head(iou_token_out)
        return (masks if computed == token_slice else masks[:, token_slice]), iou_pred[:, token_slice]

    def _upscaling_is_sams(self) -> bool:
        """True when ``output_upscaling`` is SAM's: ConvT 2×2/s2, LayerNorm2d, act, ConvT 2×2/s2, act, and no forward
        hook watches its modules (MAC counters, feature probes: they see the modules called as before)."""
        up = self.output_upscaling
        hooked = any(m._forward_hooks or m._forward_pre_hooks for m in up.modules())
        hooked = hooked or bool(nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
        return (not hooked and len(up) == 5 and isinstance(up[1], LayerNorm2d)
                and all(isinstance(m, nn.ConvTranspose2d) and m.kernel_size == (2, 2) and m.stride == (2, 2)
                        and m.padding == (0, 0) and m.groups == 1 and m.dilation == (1, 1) for m in (up[0], up[3])))

    def _masks_channels_last(self, src: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """SAM's upscaling and mask product on image tokens B×hw×C → B×T×4h×4w, in token-major layout.

        A 2×2 stride-2 transposed convolution writes each input pixel's 2×2 output block on its own (no overlap),
        so it is a matmul C → 4·C' per pixel; the channel LayerNorm, the activations and the product with the
        hypernetwork outputs are per pixel too. So everything runs on rows of channels and only the T masks are
        rearranged into the 4h×4w grid at the end (the result equals the NCHW modules' up to float rounding).
        """
        up1, norm, act1, up2, act2 = self.output_upscaling
        batch = src.shape[0]

        def as_linear(conv: nn.ConvTranspose2d) -> tuple[torch.Tensor, torch.Tensor | None, int]:
            # weight Cin×Cout×2×2 → (2·2·Cout)×Cin: output rows ordered (di, dj, channel); the bias, repeated
            # per (di, dj), goes into the matmul (addmm) instead of a separate pass over the 4×-larger output.
            # Rearranged once per call, not per slice of tokens.
            weight = conv.weight.permute(2, 3, 1, 0).reshape(4 * conv.out_channels, conv.in_channels)
            return weight, (conv.bias.repeat(4) if conv.bias is not None else None), conv.out_channels

        linear1, linear2 = as_linear(up1), as_linear(up2)

        def conv_t(x: torch.Tensor, linear: tuple[torch.Tensor, torch.Tensor | None, int]) -> torch.Tensor:
            weight, bias, out_channels = linear
            return F.linear(x, weight, bias).unflatten(-1, (4, out_channels))

        tokens = hyper_in.shape[1]

        def upscale(rows: torch.Tensor) -> torch.Tensor:
            """B×n×C image tokens → B×(n·4·4)×T mask logits, rows ordered (token, a, b, c, d)."""
            x = conv_t(rows, linear1)  # B×n×4×C1, blocks (a, b)
            x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
            x = act2(conv_t(x, linear2))  # B×n×4×4×C2, blocks (a, b) then (c, d)
            return x.reshape(batch, 16 * rows.shape[1], x.shape[-1]) @ hyper_in.transpose(1, 2)

        if eager_inference():
            # Every image token's 4×4 block is computed on its own, so the tokens go through in slices: the two
            # upscaled tensors (16× the tokens, B×hw×4×4×C2 alone is 42 MB for 5 prompts at 1024) then never
            # leave the cache, and no fresh large buffer is faulted in per call. Outputs are identical.
            step = max(16, 2048 // max(batch, 1))
            masks = torch.cat([upscale(src[:, i : i + step]) for i in range(0, src.shape[1], step)], dim=1)
        else:
            masks = upscale(src)  # B×(hw·4·4)×T
        # row 4i + 2a + c, column 4j + 2b + d
        masks = masks.reshape(batch, height, width, 2, 2, 2, 2, tokens).permute(0, 7, 1, 3, 5, 2, 4, 6)
        return masks.reshape(batch, tokens, 4 * height, 4 * width)
