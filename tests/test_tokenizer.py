"""Tests of iVideoGPT's compressive tokenizer (tiny config on CPU; paper sizes on the meta device)."""
import json

import numpy as np
import pytest
import torch

from worldmodel.ivideogpt.losses import PerceptualLoss
from worldmodel.ivideogpt.quantizer import VectorQuantizer
from worldmodel.ivideogpt.tokenizer import CompressiveTokenizer, ContextCache, TokenizerInputError
from worldmodel.ivideogpt.tokenizer_configs import tokenizer_config

T0 = 2  # context frames of every preset


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a loaded 2-core machine two threads run ~10x slower here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(**overrides) -> CompressiveTokenizer:
    return CompressiveTokenizer(tokenizer_config("tiny", **overrides))


def random_frames(b: int, t: int) -> torch.Tensor:
    return torch.rand(b, t, 3, 64, 64) * 2 - 1


@pytest.fixture(scope="module")
def metaworld_frames() -> torch.Tensor:
    """Real Meta-World frames (reach-v3, corner camera, random actions): [3 segments, 3, 3, 64, 64]."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World envs)

    env = gym.make("Meta-World/MT1", env_name="reach-v3", render_mode="rgb_array",
                   camera_name="corner", width=64, height=64)
    rng = np.random.default_rng(0)
    segments = []
    try:
        for seed in range(3):
            env.reset(seed=seed)
            frames = [env.render().copy()]
            for _ in range(2):
                env.step(rng.uniform(-1, 1, env.action_space.shape).astype(np.float32))
                frames.append(env.render().copy())
            segments.append(np.stack(frames))
    finally:
        env.close()
    x = torch.from_numpy(np.stack(segments)).permute(0, 1, 4, 2, 3).float()  # [3, 3, 3, 64, 64]
    return x / 127.5 - 1


def test_token_shapes_and_paper_sizes():
    tok = tiny()
    assert tok.context_token_shape == (16, 16) and tok.future_token_shape == (4, 4)
    assert tok.context_frames == T0 and tok.image_size == 64
    with torch.device("meta"):
        p64 = CompressiveTokenizer(tokenizer_config("paper64"))
        p256 = CompressiveTokenizer(tokenizer_config("paper256"))
    assert p64.context_token_shape == (16, 16) and p64.future_token_shape == (4, 4)
    assert p64.context_vocab_size == p64.future_vocab_size == 8192
    n64 = sum(p.numel() for p in p64.parameters())
    n256 = sum(p.numel() for p in p256.parameters())
    assert n64 == 114_159_174  # the paper's "114M"
    assert n256 == 310_472_774  # the paper's "310M" at 256x256
    assert p256.context_token_shape == (16, 16) and p256.future_token_shape == (4, 4)
    # a few official key names / shapes (the checkpoint importer relies on them)
    sd = {k: tuple(v.shape) for k, v in p64.state_dict().items()}
    assert sd["quantize.embedding.weight"] == (8192, 64)
    assert sd["dynamics_quantize.embedding.weight"] == (8192, 64)
    assert sd["quant_linear.weight"] == (64, 1024) and sd["post_quant_linear.weight"] == (1024, 64)
    assert sd["cond_encoder.cross_att_blocks.0.kv_pos_emb"] == (2 * 256, 256)
    assert sd["cond_encoder.cross_att_blocks.1.att.in_proj_weight"] == (3 * 512, 512)
    assert sd["cond_decoder.cross_att_blocks.0.q_pos_emb"] == (256, 512)
    assert sd["cond_decoder.mid_block.attentions.0.to_q.weight"] == (512, 512)
    assert "decoder.mid_block.attentions.0.to_q.weight" not in sd  # no mid attention in the plain AE
    assert sd["decoder.up_blocks.0.resnets.2.conv1.weight"] == (512, 512, 3, 3)
    assert not any(k.startswith("discriminator.") for k in sd)
    json.dumps(tok.config)  # plain, JSON-serialisable


def test_encode_decode_shapes_and_cache_ops():
    tok = tiny().eval()
    x = random_frames(2, T0 + 3)
    with torch.no_grad():
        ctx_codes, cache = tok.encode_context(x[:, :T0])
        fut_codes = tok.encode_future(x[:, T0:], cache)
        assert ctx_codes.shape == (2, T0, 16, 16) and ctx_codes.dtype == torch.long
        assert fut_codes.shape == (2, 3, 4, 4) and fut_codes.dtype == torch.long
        assert 0 <= int(ctx_codes.min()) and int(ctx_codes.max()) < tok.context_vocab_size
        assert 0 <= int(fut_codes.min()) and int(fut_codes.max()) < tok.future_vocab_size
        ctx = tok.decode_context(ctx_codes)
        fut = tok.decode_future(fut_codes, cache)
        assert ctx.shape == (2, T0, 3, 64, 64) and fut.shape == (2, 3, 3, 64, 64)
        assert ctx.abs().max() <= 1 and fut.abs().max() <= 1
        # batched imagination: repeated cache = decoding each entry with its own cache
        rep = cache.repeat_interleave(3)
        assert isinstance(rep, ContextCache) and rep.batch_size == 6
        # (other batch sizes: the convolutions' blocking, hence float rounding, depends on it;
        # 1e-4 is far below a uint8 step of 2/255)
        fut_rep = tok.decode_future(fut_codes.repeat_interleave(3, 0), rep)
        torch.testing.assert_close(fut_rep[3:6], fut[1:2].expand(3, -1, -1, -1, -1), atol=1e-4, rtol=0)
        one = cache.index_select(torch.tensor([1]))
        torch.testing.assert_close(tok.decode_future(fut_codes[1:], one), fut[1:], atol=1e-4, rtol=0)
        # the decoder-side cache rebuilt from codes alone decodes the same frames
        from_codes = tok.context_cache_from_codes(ctx_codes)
        torch.testing.assert_close(tok.decode_future(fut_codes, from_codes), fut, atol=1e-5, rtol=0)
        with pytest.raises(TokenizerInputError, match="encode_context"):
            tok.encode_future(x[:, T0:], from_codes)
        # imagination's per-step decoding: the cross-attention keys/values kept in the cache
        kv = tok.decoder_kv(cache)
        assert cache.dec_kv is kv and tok.decoder_kv(cache) is kv  # computed once
        torch.testing.assert_close(tok.decode_newest(fut_codes[:, 2], *kv), fut[:, 2], atol=1e-5, rtol=0)
        rep_kv = cache.repeat_interleave(3).dec_kv  # carried through the cache ops
        torch.testing.assert_close(tok.decode_newest(fut_codes[:, 2].repeat_interleave(3, 0), *rep_kv)[3:6],
                                   fut[1:2, 2].expand(3, -1, -1, -1), atol=1e-4, rtol=0)


@pytest.mark.parametrize("heads", [1, 4])
def test_cross_attention_equals_multihead_attention(heads):
    """CrossAttentionBlock computes nn.MultiheadAttention's maths from its parameters, split
    into the context's keys/values (cached by imagination) and the queries' half."""
    from worldmodel.ivideogpt.tokenizer_blocks import CrossAttentionBlock

    torch.manual_seed(0)
    block = CrossAttentionBlock(32, 4, kv_frames=2, norm_groups=8, act_fn="silu", num_heads=heads, dropout=0.0)
    for p in (block.kv_pos_emb, block.q_pos_emb, block.att.in_proj_bias):
        torch.nn.init.normal_(p)
    z, context = torch.randn(6, 32, 4, 4, requires_grad=True), torch.randn(2, 2, 32, 4, 4)  # B=2, T=3

    def reference(z):  # the official formula, through nn.MultiheadAttention itself
        B, t, C, h, w = context.shape
        kv = block.kv_norm(context.transpose(1, 2).reshape(B, C, t * h, w)).flatten(2).transpose(1, 2)
        kv = kv + block.kv_pos_emb
        q = (block.q_norm(z).flatten(2).transpose(1, 2) + block.q_pos_emb).reshape(B, -1, C)
        out, _ = block.att(q, kv, kv, need_weights=False)
        return block.act(z + out.reshape(z.shape[0], h * w, C).transpose(1, 2).reshape(z.shape))

    ours, ref = block(z, context), reference(z)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    g_ours, = torch.autograd.grad(ours.square().sum(), z)
    g_ref, = torch.autograd.grad(ref.square().sum(), z)
    torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        block.eval()
        torch.testing.assert_close(block.attend(z, *block.context_kv(context)), reference(z), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_upsampler_equals_diffusers_upsample_then_conv(channels_last):
    """The decoders' transposed-convolution upsampler gives diffusers' Upsample2D (nearest 2x,
    then the same 3x3 conv) in value and gradients, at the borders too, and sits in every
    decoder under the official key names."""
    from diffusers.models.upsampling import Upsample2D

    from worldmodel.ivideogpt.tokenizer_blocks import NearestUpsampleConv

    torch.manual_seed(0)
    ours, ref = NearestUpsampleConv(6), Upsample2D(6, use_conv=True)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 6, 5, 7)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), ref(x2)
    assert y1.shape == (3, 6, 10, 14)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    w = torch.randn_like(y2)  # a loss that weighs every output pixel differently
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.conv.weight.grad, ref.conv.weight.grad, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.conv.bias.grad, ref.conv.bias.grad, atol=1e-4, rtol=1e-4)
    tok = tiny()
    for decoder in (tok.decoder, tok.cond_decoder):
        ups = [b.upsamplers[0] for b in decoder.up_blocks if b.upsamplers is not None]
        assert len(ups) == 2 and all(isinstance(u, NearestUpsampleConv) for u in ups)
    assert "decoder.up_blocks.0.upsamplers.0.conv.weight" in tok.state_dict()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # the CUDA path's precision
        y1, y2 = ours(x), ref(x)
    assert y1.dtype == y2.dtype == torch.bfloat16
    torch.testing.assert_close(y1.float(), y2.float(), atol=0.05, rtol=0.02)


@pytest.mark.parametrize("out_channels", [6, 4])
def test_residual_block_equals_diffusers_resnet(out_channels):
    """The lean resnet forward gives diffusers' ``ResnetBlock2D.forward`` bit for bit, with and
    without a 1x1 shortcut, and the same gradients; every resnet of the stacks uses it."""
    from diffusers.models.resnet import ResnetBlock2D

    from worldmodel.ivideogpt.tokenizer_blocks import ResidualBlock, use_lean_blocks

    torch.manual_seed(0)
    ref = ResnetBlock2D(in_channels=6, out_channels=out_channels, temb_channels=None, groups=2, eps=1e-6)
    ours = ResnetBlock2D(in_channels=6, out_channels=out_channels, temb_channels=None, groups=2, eps=1e-6)
    ours.load_state_dict(ref.state_dict())
    use_lean_blocks(ours)
    assert type(ours) is ResidualBlock and (ours.conv_shortcut is None) == (out_channels == 6)
    x = torch.randn(3, 6, 8, 8)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1, None), ref(x2, None)
    assert torch.equal(y1, y2)
    w = torch.randn_like(y2)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.conv1.weight.grad, ref.conv1.weight.grad, atol=1e-6, rtol=1e-5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 convs, fp32 input
        y1, y2 = ours(x, None), ref(x, None)
    assert y1.dtype == y2.dtype and torch.equal(y1, y2)
    tok = tiny()
    resnets = [m for m in tok.modules() if isinstance(m, ResnetBlock2D)]
    assert resnets and all(type(m) is ResidualBlock for m in resnets)


def test_decoder_convolutions_in_bf16_stay_close_to_fp32():
    """Under ``conv_compute_dtype(bf16)`` every decoder convolution (the upsamplers' too) multiplies
    in bf16 and hands back fp32: the frame is within bf16 rounding of the fp32 one but not equal
    to it; outside the block nothing changes."""
    from torch import nn

    from worldmodel.ivideogpt.tokenizer_blocks import MixedPrecisionConv2d, conv_compute_dtype

    torch.manual_seed(0)
    tok = tiny().eval()
    for stack in (tok.encoder, tok.cond_encoder, tok.decoder, tok.cond_decoder):
        assert all(type(m) is MixedPrecisionConv2d for m in stack.modules() if isinstance(m, nn.Conv2d))
    frames = torch.rand(2, T0, 3, 64, 64) * 2 - 1
    future = torch.randint(0, tok.future_vocab_size, (2, 4, 4))
    with torch.no_grad():
        _, cache = tok.encode_context(frames)
        kv = tok.decoder_kv(cache)
        fp32 = tok.decode_newest(future, *kv)
        seen = []
        hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in tok.cond_decoder.modules()
                 if type(m) is MixedPrecisionConv2d]
        with conv_compute_dtype(torch.bfloat16):
            bf16 = tok.decode_newest(future, *kv)
        for h in hooks:
            h.remove()
        again = tok.decode_newest(future, *kv)
    assert bf16.dtype == torch.float32 and seen and set(seen) == {torch.float32}
    assert not torch.equal(bf16, fp32)  # the convolutions did run in bf16
    torch.testing.assert_close(bf16, fp32, atol=0.1, rtol=0)
    assert (bf16 - fp32).abs().mean() < 0.01
    torch.testing.assert_close(again, fp32, atol=0, rtol=0)  # outside the block: fp32 again


@pytest.mark.parametrize("max_att", [16, 32])
def test_context_cache_runs_only_the_decoder_levels_it_needs(max_att):
    """The conditional decoder's context features equal the full context decoder's, and the
    decoder stops at the last level they need (no full-resolution up blocks)."""
    tok = tiny(max_att_resolution=max_att, cross_attn_norm_groups=8).eval()
    codes = torch.randint(0, tok.context_vocab_size, (2, T0, 16, 16))
    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, k=k: ran.append(k)) for k, b in enumerate(tok.decoder.up_blocks)]
    with torch.no_grad():
        cached = tok.context_cache_from_codes(codes).dec_features
        needed = list(ran)
        _, full = tok.decoder(tok._context_latent(codes.flatten(0, 1)))
    for h in hooks:
        h.remove()
    ids = tok.cond_decoder.context_feature_ids()
    assert len(cached) == len(ids) >= 1
    for f, i in zip(cached, ids):
        torch.testing.assert_close(f, full[i].reshape(2, T0, *full[i].shape[1:]), atol=0, rtol=0)
    # features: [conv_in, mid, up_0, ...]; 16x16 is the mid block, 32x32 is up block 0's output
    assert needed == ([] if max_att == 16 else [0])


def test_one_future_frame_equals_many_and_context_independence():
    tok = tiny().eval()
    x = random_frames(2, T0 + 4)
    with torch.no_grad():
        ctx_codes, cache = tok.encode_context(x[:, :T0])
        many = tok.encode_future(x[:, T0:], cache)
        for j in range(4):
            assert torch.equal(tok.encode_future(x[:, T0 + j:T0 + j + 1], cache)[:, 0], many[:, j])
        frames = tok.decode_future(many, cache)
        for j in range(4):
            torch.testing.assert_close(tok.decode_future(many[:, j:j + 1], cache)[:, 0], frames[:, j],
                                       atol=1e-5, rtol=0)
        # changing future frame 0 leaves the codes of frames 1..3 unchanged
        x2 = x.clone()
        x2[:, T0] = random_frames(2, 1)[:, 0]
        assert torch.equal(tok.encode_future(x2[:, T0:], cache)[:, 1:], many[:, 1:])
        # changing the codes of future frame 0 leaves the decoded frames 1..3 unchanged ...
        codes2 = many.clone()
        codes2[:, 0] = (codes2[:, 0] + 1) % tok.future_vocab_size
        dec2 = tok.decode_future(codes2, cache)
        torch.testing.assert_close(dec2[:, 1:], frames[:, 1:], atol=1e-5, rtol=0)
        assert (dec2[:, 0] - frames[:, 0]).abs().max() > 1e-4
        # ... while the context does condition them (the cross-attention is effective)
        other = tok.context_cache_from_codes((ctx_codes + 1) % tok.context_vocab_size)
        assert (tok.decode_future(many, other) - frames).abs().max() > 1e-4


def test_reconstruction_loss_falls_on_metaworld(metaworld_frames):
    tok = tiny()
    opt = torch.optim.AdamW(tok.generator_parameters(), lr=2e-3)

    def eval_loss() -> float:
        tok.eval()
        with torch.no_grad():
            return tok(metaworld_frames)[1]["rec_loss"].item()

    start = eval_loss()
    tok.train()
    for step in range(20):
        loss, metrics = tok(metaworld_frames, global_step=step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tok.parameters(), 1.0)
        opt.step()
        assert torch.isfinite(loss)
    end = eval_loss()
    for key in ("rec_loss", "commit_loss", "perplexity", "codes_used", "dead_codes_reset"):
        assert metrics[key].dim() == 0 and torch.isfinite(metrics[key])
    assert tok.last_recon.shape == metaworld_frames.shape
    assert end < 0.5 * start, (start, end)


@pytest.mark.parametrize("training", [False, True])
def test_vq_loss_is_beta_times_commitment_plus_codebook_term(training):
    """loss = beta * mse(z, sg[e]) + mse(e, sg[z]) (diffusers' VectorQuantizer, legacy=False): z gets the
    straight-through gradient plus beta times the commitment gradient, and only the chosen codes move."""
    beta = 0.25  # != 1, so that moving beta onto the codebook term shows
    vq = VectorQuantizer(num_codes=5, dim=2, beta=beta).train(training)
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0], [-5.0, 5.0]])
    with torch.no_grad():
        vq.embedding.weight.copy_(codebook)
    z = torch.tensor([[0.1, 0.2], [0.9, -0.1], [0.2, 0.7], [1.2, 0.3]], requires_grad=True)
    z_q, loss, codes, _ = vq(z)
    assert codes.tolist() == [0, 1, 2, 1]  # codes 3 and 4 unused, code 1 twice
    e = codebook[codes]
    torch.testing.assert_close(z_q, e)
    sq = (z.detach() - e).pow(2).mean()  # both terms have this value
    torch.testing.assert_close(loss, (1 + beta) * sq, rtol=1e-6, atol=0)

    upstream = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0], [2.0, 1.0]])
    (z_q * upstream).sum().add(loss).backward()
    n = z.numel()
    # straight-through: the upstream gradient passes to z unchanged; commitment: beta * 2 (z - e) / n
    torch.testing.assert_close(z.grad, upstream + beta * 2 * (z.detach() - e) / n, rtol=1e-6, atol=1e-7)
    # codebook term: 2 (e - z) / n summed into each chosen row; the unused rows get exactly nothing
    want = torch.zeros_like(codebook).index_add_(0, codes, 2 * (e - z.detach()) / n)
    torch.testing.assert_close(vq.embedding.weight.grad, want, rtol=1e-6, atol=1e-7)
    assert vq.embedding.weight.grad[3:].eq(0).all()


def test_dead_codes_are_revived():
    x = random_frames(2, T0 + 2)
    alive = 4

    def kill_codes(tok) -> None:
        """Move all context codes but the first few far away, so no encoder output picks them."""
        with torch.no_grad():
            tok.quantize.embedding.weight[alive:] = 100.0

    def distinct_ctx_codes(tok) -> int:
        with torch.no_grad():
            return tok.encode_context(x[:, :T0])[0].unique().numel()

    tok = tiny(dead_code_steps=2).train()
    kill_codes(tok)
    assert distinct_ctx_codes(tok) <= alive
    resets = []
    with torch.no_grad():
        for step in range(3):
            resets.append(tok(x, global_step=step)[1]["ctx_dead_codes_reset"].item())
    assert resets[0] == 0 and resets[1] >= tok.context_vocab_size - alive  # revived after 2 unused steps
    assert tok.quantize.embedding.weight.abs().max() < 100.0
    assert distinct_ctx_codes(tok) > 4 * alive  # the revived codes are used
    # control: with re-init off the dead codes stay dead
    off = tiny(dead_code_steps=2, dead_code_reset=False).train()
    kill_codes(off)
    with torch.no_grad():
        for step in range(3):
            assert off(x, global_step=step)[1]["dead_codes_reset"].item() == 0
    assert distinct_ctx_codes(off) <= alive


def test_a_non_finite_batch_leaves_the_codebook_alone_and_revived_codes_are_not_counted_as_used():
    q = VectorQuantizer(16, 4, dead_code_steps=2).train()
    z = q.embedding.weight.detach()[:2].repeat(4, 1)  # [8, 4]: picks codes 0 and 1 only
    before = q.embedding.weight.detach().clone()
    diverged = z.clone()
    diverged[0, 0] = float("nan")  # e.g. a bf16 overflow in the encoder
    for _ in range(3):
        stats = q(diverged)[3]
    assert torch.equal(q.embedding.weight, before) and (q.steps_unused == 0).all()
    assert stats["dead_codes_reset"] == 0
    stats = [q(z)[3] for _ in range(3)]  # 14 codes revived at the second step, from z
    assert stats[1]["dead_codes_reset"] == 14 and torch.isfinite(q.embedding.weight).all()
    # z still picks 0 and 1: the revived codes, never chosen since, are not in use
    assert stats[2]["codes_used"] == pytest.approx(2 / 16)


def test_gan_adaptive_weight_only_after_disc_start():
    tok = tiny(gan=True, disc_start=2).train()
    x = random_frames(2, T0 + 2)
    gen_ids = {id(p) for p in tok.generator_parameters()}
    disc = list(tok.discriminator_parameters())
    assert disc and not any(id(p) in gen_ids for p in disc)
    loss, m = tok(x, global_step=1)
    assert "adaptive_weight" not in m and "gan_loss" not in m
    d_loss, _ = tok.discriminator_loss(x, tok.last_recon, global_step=1)
    assert d_loss.item() == 0.0
    loss, m = tok(x, global_step=2)
    assert "adaptive_weight" in m and torch.isfinite(m["adaptive_weight"]) and m["adaptive_weight"] > 0
    loss.backward()
    assert tok.cond_decoder.conv_out.weight.grad is not None
    assert all(p.grad is None for p in disc)  # the generator loss does not train the discriminator
    d_loss, dm = tok.discriminator_loss(x, tok.last_recon, global_step=2)
    assert d_loss.item() > 0 and "logits_real" in dm
    d_loss.backward()
    assert all(p.grad is not None for p in disc)
    with pytest.raises(RuntimeError, match="gan=True"):
        tiny().discriminator_loss(x, x, global_step=0)


def test_perceptual_loss_from_weights_file(tmp_path):
    from safetensors.torch import save_file

    stages = tokenizer_config("tiny")["perceptual_channels"]
    path = tmp_path / "lpips_tiny.safetensors"
    with pytest.raises(FileNotFoundError, match="perceptual_weights_path"):
        PerceptualLoss(stages, path)
    # a weights file for the LPIPS-style net (random here: no weights can be downloaded)
    state = {"net.slice1.0.weight": torch.randn(8, 3, 3, 3) * 0.3, "net.slice1.0.bias": torch.zeros(8),
             "net.slice2.3.weight": torch.randn(16, 8, 3, 3) * 0.3, "net.slice2.3.bias": torch.zeros(16),
             "lin0.model.1.weight": torch.rand(1, 8, 1, 1), "lin1.model.1.weight": torch.rand(1, 16, 1, 1)}
    save_file(state, str(path))
    net = PerceptualLoss(stages, path)
    a, b = random_frames(3, 1)[:, 0], random_frames(3, 1)[:, 0]
    assert net(a, a).abs().max() < 1e-6 and (net(a, b) > 0).all()
    plain = tiny().train()
    tok = tiny(perceptual_weights_path=str(path)).train()
    tok.load_state_dict(plain.state_dict())
    frames = random_frames(2, T0 + 1)
    torch.manual_seed(0)
    loss, m = tok(frames)
    torch.manual_seed(0)
    plain_loss, _ = plain(frames)
    assert m["perceptual_loss"] > 0
    perceptual_term = tok.config["perceptual_weight"] * m["perceptual_loss"].item()
    assert loss.item() == pytest.approx(plain_loss.item() + perceptual_term)
    loss.backward()
    assert not any(k.startswith("_perceptual") or "lin0" in k for k in tok.state_dict())
    # the net is only for training: without its file a tokenizer still builds (and imagines), and
    # its first training loss names the file
    path.unlink()
    missing = tiny(perceptual_weights_path=str(path)).train()
    with pytest.raises(FileNotFoundError, match="perceptual_weights_path"):
        missing(frames)


def test_adaptive_gan_weight_is_vqgans_gradient_norm_ratio():
    from worldmodel.ivideogpt.losses import adaptive_gan_weight

    last = torch.ones(3, 4, requires_grad=True)
    ref, gan = (2.0 * last).sum(), (0.5 * last).sum()  # gradients 2 and 0.5 everywhere
    assert adaptive_gan_weight(ref, gan, last, max_weight=1e4).item() == pytest.approx(4.0)
    assert adaptive_gan_weight(gan, ref, last, max_weight=1e4).item() == pytest.approx(0.25)
    assert adaptive_gan_weight(ref, gan, last, max_weight=3.0).item() == pytest.approx(3.0)


def test_bf16_autocast_and_clear_errors():
    tok = tiny().train()
    x = random_frames(2, T0 + 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = tok(x)
        codes, cache = tok.encode_context(x[:, :T0])
        frames = tok.decode_future(tok.encode_future(x[:, T0:], cache), cache)
    assert torch.isfinite(loss) and frames.shape == (2, 1, 3, 64, 64)
    loss.backward()
    with pytest.raises(TokenizerInputError, match="context_frames"):
        tok.encode_context(x[:, :1])
    with pytest.raises(TokenizerInputError, match="uint8"):
        tok.encode_context(((x[:, :T0] + 1) * 127.5).to(torch.uint8))
    with pytest.raises(TokenizerInputError, match=r"\[-1, 1\]"):
        tok.encode_context((x[:, :T0] + 1) * 127.5)
    with pytest.raises(TokenizerInputError, match=r"\[B, T, 3, 64, 64\]"):
        tok(torch.rand(2, 3, 3, 32, 32))
    with pytest.raises(TokenizerInputError, match="lie in"):
        tok.decode_context(torch.full((1, T0, 16, 16), tok.context_vocab_size))
    with pytest.raises(TokenizerInputError, match="repeat_interleave"):
        tok.decode_future(torch.zeros(3, 1, 4, 4, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="unknown tokenizer config keys"):
        tokenizer_config("tiny", channels=3)
    with pytest.raises(ValueError, match=r"cross-attention at 32x32 has 16 channels.*cross_attn_norm_groups=32"):
        tiny(max_att_resolution=32, cross_attn_norm_groups=32)  # block 0 (16 channels), a 32-group norm
