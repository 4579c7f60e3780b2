"""SAM's two-way transformer: prompt tokens and image tokens attend to each other in turn.

Names (``layers.{i}.{self_attn,cross_attn_token_to_image,cross_attn_image_to_token}.{q,k,v,out}_proj``,
``norm1..norm4``, ``mlp.{lin1,lin2}``, ``final_attn_token_to_image``, ``norm_final_attn``) match Meta's module.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..common import MLPBlock


_shortcuts_allowed = True
FEW_TOKENS = 16  # prompt-side token sets up to this size and image-side sets of at least MANY_TOKENS take the
MANY_TOKENS = 256  # inference shortcuts of Attention (projections folded into the few tokens' side)


@contextmanager
def reference_ops() -> Iterator[None]:
    """Inside this block the mask decoder runs SAM's op sequence even without autograd: MAC counts that match the
    model's definition (spec §2.5), and A/B timings of the shortcuts (``scripts/decoder_per_box.py --plain``)."""
    global _shortcuts_allowed
    saved, _shortcuts_allowed = _shortcuts_allowed, False
    try:
        yield
    finally:
        _shortcuts_allowed = saved


def shortcuts_allowed() -> bool:
    """False inside :func:`reference_ops`."""
    return _shortcuts_allowed


def _capturing_graph() -> bool:
    """True while torch.jit traces or torch.onnx exports: Python-level branching and loops would be baked in."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def inference_folds() -> bool:
    """True outside autograd and :func:`reference_ops`, graph capture included: where the decoder may fold its
    projections into the few tokens' side (token→image attention without projecting the image keys, image→token
    attention as two dense products, the final attention for the read tokens only). Exact math, equal to SAM's op
    sequence up to float rounding, and written for any prompt batch, so an exported graph carries the folds as plain
    ops; the loops, slicing and in-place tricks of :func:`eager_inference` stay out of graphs."""
    return _shortcuts_allowed and not torch.is_grad_enabled()


def eager_inference() -> bool:
    """True outside autograd, graph capture and :func:`reference_ops`: where the decoder may take the shortcuts that
    depend on the call's own batch and device (one product over keys shared by every prompt, a product per prompt on
    the CPU, the in-place residual, upscaling in cache-sized slices). Training keeps SAM's exact op sequence; a
    captured graph gets the folds of :func:`inference_folds` only."""
    return _shortcuts_allowed and not torch.is_grad_enabled() and not _capturing_graph()


def token_major(x: Tensor) -> Tensor:
    """B×C×h×w → B×(h·w)×C, contiguous, values unchanged.

    On the CPU the copy runs one 2-D transpose per image: PyTorch's batched transposed copy took 14.6 ms for a
    1×256×64×64 embedding on one thread, the 2-D one 0.8 ms. A tensor already laid out token-major is not copied.
    """
    tokens = x.flatten(2).transpose(1, 2)
    # while capturing a graph the loop below would fix the batch size in it
    if tokens.is_contiguous() or x.device.type != "cpu" or _capturing_graph():
        return tokens.contiguous()
    out = torch.empty(tokens.shape, dtype=x.dtype, device=x.device)
    channels_first = x.flatten(2)
    for index in range(x.shape[0]):
        out[index].copy_(channels_first[index].t())
    return out


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/out projections and an optional narrower internal width.

    ``downsample_rate`` r projects q, k, v to embedding_dim / r channels (cheaper cross-attention to the image).
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError(
                f"Attention: internal width {self.internal_dim} (embedding_dim {embedding_dim} / downsample_rate "
                f"{downsample_rate}) is not divisible by num_heads={num_heads}"
            )
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.fused = True  # softmax(q·kᵀ/√c)·v as one fused kernel; False: the three explicit ops

    def _split_heads(self, x: Tensor) -> Tensor:
        """B×N×C → B×heads×N×(C/heads)."""
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    @staticmethod
    def _merge_heads(x: Tensor) -> Tensor:
        """B×heads×N×c → B×N×(heads·c)."""
        batch, heads, tokens, channels = x.shape
        return x.transpose(1, 2).reshape(batch, tokens, heads * channels)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None = None,
                residual_writable: bool = False) -> Tensor:
        """q: B×Nq×C, k and v: B×Nk×C (or 1×Nk×C, shared by the B query sets) → B×Nq×C, plus ``residual``
        (B×Nq×C or 1×Nq×C) when given. ``residual_writable``: the caller no longer needs ``residual``, so inference
        may accumulate the output into it (the returned tensor may then be ``residual`` itself)."""
        if inference_folds():
            few_queries, few_keys = q.shape[1] <= FEW_TOKENS, k.shape[1] <= FEW_TOKENS
            if few_queries and k.shape[1] >= MANY_TOKENS:
                return self._attend_few_queries(q, k, v, residual)
            if few_keys and q.shape[1] >= MANY_TOKENS and q.shape[0] == k.shape[0]:
                # queries of their own per prompt: the query projection goes into the keys' side (below)
                return self._attend_few_keys(q, self.k_proj(k), self.v_proj(v), residual, project_queries=True,
                                             residual_writable=residual_writable)
        return self.attend_projected(self.q_proj(q), self.k_proj(k), self.v_proj(v), residual)

    def _attend_few_queries(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None) -> Tensor:
        """Token→image attention (a handful of queries, thousands of keys) without projecting the keys.

        q B×Nq×C (few), k and v B×Nk×C or 1×Nk×C (shared) **unprojected** → B×Nq×C. Each head's query goes through
        the key projection instead of the Nk keys: q_h·(W_k,h x + b_k,h) = (W_k,hᵀ q_h)·x + const, and a constant
        per query does not change its softmax; likewise the attention-weighted sum of the raw values is projected
        once per query (P·(X W_vᵀ + b_v) = (P·X) W_vᵀ + b_v, as P's rows sum to 1). The two Nk×c projections (2·Nk·C·c
        MACs) become heads·Nq·C·Nk MACs each way: for SAM's 7 box tokens and 8 heads of 16, 56 instead of 128 a
        key, with no Nk×c tensors written. Equal to the plain path up to float rounding.
        """
        batch, num_queries, channels = q.shape
        heads, head_dim = self.num_heads, self.internal_dim // self.num_heads
        q = self.q_proj(q).view(batch, num_queries, heads, head_dim).transpose(1, 2) / math.sqrt(head_dim)
        folded = q @ self.k_proj.weight.view(1, heads, head_dim, channels)  # B×h×Nq×C
        # Keys shared by the B prompts: one product for all of them. Eager only: a captured graph must take any
        # batch, and the broadcasting product below does (a trace that saw one key set would bake k[0] in).
        eager = eager_inference()
        if k.shape[0] == 1 and eager:
            rows = folded.reshape(batch * heads * num_queries, channels)  # query rows of every prompt and head
            scores = (rows @ k[0].t()).view(batch, heads * num_queries, -1)
        else:
            scores = folded.reshape(batch, heads * num_queries, channels) @ k.transpose(1, 2)
        probs = torch.softmax(scores, dim=-1)  # B×(h·Nq)×Nk
        if v.shape[0] == 1 and eager:
            mixed = (probs.view(batch * heads * num_queries, -1) @ v[0]).view(batch, heads, num_queries, channels)
        else:
            mixed = (probs @ v).view(batch, heads, num_queries, channels)
        out = mixed @ self.v_proj.weight.view(1, heads, head_dim, channels).transpose(-2, -1)  # B×h×Nq×d
        out = out + self.v_proj.bias.view(1, heads, 1, head_dim)
        out = self.out_proj(out.transpose(1, 2).reshape(batch, num_queries, heads * head_dim))
        return out if residual is None else residual + out

    def attend_projected(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None = None) -> Tensor:
        """Attention of already projected q B×Nq×c, k and v B×Nk×c (c = internal width) → B×Nq×C (+ residual)."""
        batch, num_queries = q.shape[:2]
        if inference_folds():
            if batch > 1 and k.shape[0] == 1 and v.shape[0] == 1 and eager_inference():
                # Keys and values shared by every query set (the first layer's token→image attention on one image
                # for all prompts): each query attends on its own, so the B sets attend side by side as one. A
                # stride-0 batch instead sends the fused kernel to its slow path, which copies the keys per prompt.
                out = self.attend_projected(q.reshape(1, batch * num_queries, q.shape[2]), k, v)
                out = out.reshape(batch, num_queries, -1)
                return out if residual is None else residual + out
            if k.shape[1] <= 16 and num_queries >= 256:
                return self._attend_few_keys(q, k, v, residual)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        out = F.scaled_dot_product_attention(q, k, v) if self.fused else self._attend(q, k, v)
        out = self.out_proj(self._merge_heads(out))
        return out if residual is None else residual + out

    def _attend_few_keys(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None,
                         project_queries: bool = False, residual_writable: bool = False) -> Tensor:
        """Image→token attention (thousands of queries, a handful of keys) as two dense products, token-major,
        output projection included.

        q B×Nq×c, k and v B×Nk×c (or 1×…) → B×Nq×C. The keys and values of all heads go into block-diagonal
        c×(heads·Nk) and (heads·Nk)×c matrices, so the scores of every head come from one product with the queries
        as they are, and no head split or merge copies the Nq×c tensors; the softmax is spelled out (the library's
        vectorises badly over rows of Nk < 16 values). The output projection is folded into the values:
        (P·V)·Woᵀ + b = P·(V·Woᵀ + b/heads), since each head's weights P sum to 1, so the Nq×c attention output is
        never formed, and the residual is accumulated by the same product. With ``project_queries`` q is the raw
        B×Nq×C input and the query projection is folded into the keys, q·W_qᵀ·K + b_q·K: a C×(heads·Nk) matrix
        per prompt instead of projecting the Nq queries (C·c MACs a query → C·heads·Nk). Equal to the plain path up to
        float rounding.
        """
        heads, nk, head_dim = self.num_heads, k.shape[1], k.shape[2] // self.num_heads
        eye = torch.eye(heads, dtype=q.dtype, device=q.device)

        def block_diagonal(per_head: Tensor) -> Tensor:
            """B×h×a×b (one a×b block per head) → B×(h·a)×(h·b) with the blocks on the diagonal."""
            blocks = per_head[:, :, :, None, :] * eye[None, :, None, :, None]  # B×h×a×h×b
            return blocks.reshape(per_head.shape[0], heads * per_head.shape[2], heads * per_head.shape[3])

        k_block = block_diagonal(k.reshape(k.shape[0], nk, heads, head_dim).permute(0, 2, 3, 1))  # from B×h×d×Nk
        k_block = k_block / math.sqrt(head_dim)
        eager = eager_inference()
        if project_queries:  # (q W_qᵀ + b_q) K = q (W_qᵀ K) + b_q K
            weight, bias = self.q_proj.weight.t() @ k_block, (self.q_proj.bias @ k_block).unsqueeze(1)
            # baddbmm needs equal batches; a captured graph gets the broadcasting product (1 or B query sets)
            scores = torch.baddbmm(bias, q, weight) if eager else q @ weight + bias
        else:
            scores = q @ k_block  # B×Nq×(h·Nk); a 1×Nq×c q broadcasts over B key sets
        batch = scores.shape[0]
        scores = scores.view(batch, q.shape[1], heads, nk)
        scores = scores - scores.amax(dim=-1, keepdim=True)
        scores = scores.exp_()
        scores = scores / scores.sum(dim=-1, keepdim=True)
        v_block = block_diagonal(v.reshape(v.shape[0], nk, heads, head_dim).transpose(1, 2))  # from B×h×Nk×d
        values = v_block @ self.out_proj.weight.t() + self.out_proj.bias / heads  # B×(h·Nk)×C
        scores = scores.view(batch, q.shape[1], heads * nk)
        values = values.expand(batch, -1, -1)
        if q.device.type != "cpu" or not eager:
            out = scores @ values
            return out if residual is None else residual + out
        # One matrix product per prompt on the CPU: a batched product with an inner size of h·Nk (56 for SAM's box
        # prompt) ran at half the speed of these (AVX2), and addmm adds the residual on the way.
        if (residual_writable and residual is not None and residual.shape == (batch, q.shape[1], values.shape[2])
                and residual.is_contiguous()):
            # accumulated in place: no copy of the B×Nq×C residual into a new output first (addmm with out= does one)
            for i in range(batch):
                residual[i].addmm_(scores[i], values[i])
            return residual
        out = scores.new_empty(batch, q.shape[1], values.shape[2])
        for i in range(batch):
            if residual is None:
                torch.mm(scores[i], values[i], out=out[i])
            else:
                torch.addmm(residual[i if residual.shape[0] > 1 else 0], scores[i], values[i], out=out[i])
        return out

    @staticmethod
    def _attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        attn = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        return torch.softmax(attn, dim=-1) @ v


class TwoWayAttentionBlock(nn.Module):
    """One decoder layer: token self-attn, token→image cross-attn, token MLP, image→token cross-attn (post-norm).

    With ``skip_first_layer_pe`` the self-attention sees the raw tokens and its output replaces them (no residual);
    SAM's first layer does this because its queries *are* the positional prompt embeddings.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads, downsample_rate=attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor,
                keys_writable: bool = False) -> tuple[Tensor, Tensor]:
        """queries B×Nt×C (tokens), keys B×Ni×C (image) and their PEs → updated (queries, keys).

        ``keys_writable``: ``keys`` belongs to the caller's computation alone (not the user's embedding), so
        inference may update it in place."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q=q, k=q, v=queries)
        queries = self.norm1(queries)

        q = queries + query_pe
        k = keys + key_pe  # the image side does not change before norm4: both cross-attentions use this k
        queries = self.norm2(queries + self.cross_attn_token_to_image(q=q, k=k, v=keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(self.cross_attn_image_to_token(q=k, k=q, v=queries, residual=keys,
                                                         residual_writable=keys_writable))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token→image attention.

    Args:
        depth: number of two-way blocks (2 in SAM).
        embedding_dim: token / image channel width (256).
        num_heads: attention heads (8).
        mlp_dim: hidden width of the token MLP (2048).
        activation: MLP activation (ReLU in SAM).
        attention_downsample_rate: internal-width divisor of the cross-attentions (2).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor,
                final_tokens: Sequence[int] | None = None) -> tuple[Tensor, Tensor]:
        """
        Args:
            image_embedding: B×C×h×w, or 1×C×h×w shared by all B token sets (computed once where it can be).
            image_pe: B×C×h×w or 1×C×h×w positional encoding of the image.
            point_embedding: B×Nt×C prompt/output tokens; also used as the tokens' PE in every layer.
            final_tokens: at inference (:func:`inference_folds`), the tokens the caller reads: only they go through
                the final token→image attention, in which every token attends on its own. None: all tokens.
        Returns:
            (tokens B×Nt×C — or B×len(final_tokens)×C, those tokens in that order, when final_tokens applied —,
            image tokens B×(h·w)×C).
        """
        # Token-major copies, made once: every projection and residual below then reads contiguous rows. An image
        # batch of 1 stays 1 while it is the same for every prompt: the first layer's image-side projections (its
        # token→image keys and values, its image→token queries) run once and broadcast over the B prompts.
        image_tokens = token_major(image_embedding)
        image_pe = token_major(image_pe)

        queries, keys = point_embedding, image_tokens
        for index, layer in enumerate(self.layers):
            # after the first layer the image tokens are this call's own tensor (a layer's norm4 output)
            queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=image_pe,
                                  keys_writable=index > 0)

        if final_tokens is not None and inference_folds():
            index = torch.as_tensor(list(final_tokens), dtype=torch.long, device=queries.device)
            queries, point_embedding = queries[:, index], point_embedding[:, index]
        q = queries + point_embedding
        k = keys + image_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q=q, k=k, v=keys))
        return queries, keys
