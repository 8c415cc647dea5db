"""Model shapes, normalisation, absent modalities, vocab and the Jetson compute budget."""

import numpy as np
import pytest
import torch

from mmfusion_ros.core.preprocess import DEFAULT
from mmfusion_ros.core.types import EVENT_HORIZONS, EVENT_TYPES, Modality
from mmfusion_ros.model.checkpoint import load_checkpoint, save_checkpoint
from mmfusion_ros.model.config import ModelConfig, tiny_config
from mmfusion_ros.model.mmfusion import SENSOR_KEYS, build_model, count_params, encoder_macs
from mmfusion_ros.model.vocab import BOS, EOS, PAD, Vocab

torch.set_num_threads(1)
SHAPES = DEFAULT.input_shapes()


def _inputs(b=3, keys=SENSOR_KEYS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn((b,) + SHAPES[k], generator=g) for k in keys}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_config(vocab_size=20)).eval()


def test_input_shapes_match_contract():
    assert SHAPES == {"camera": (3, 128, 128), "lidar": (4, 128, 128), "audio": (1, 64, 101), "imu": (6, 400)}


def test_split_is_keyed_by_modality(model):
    for d in (model.modality_preprocessors, model.modality_trunks, model.modality_heads, model.modality_postprocessors):
        assert set(d.keys()) == {m.value for m in (Modality.CAMERA, Modality.LIDAR, Modality.AUDIO, Modality.IMU)}


def test_forward_shapes_and_unit_norm(model):
    with torch.no_grad():
        out = model(_inputs())
    for k in SENSOR_KEYS + ["fused"]:
        assert out[k].shape == (3, 384)
        np.testing.assert_allclose(out[k].norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert out["weights"].shape == (3, 4)
    np.testing.assert_allclose(out["weights"].sum(-1).numpy(), 1.0, atol=1e-5)


def test_forward_runs_only_present_modalities(model):
    calls = []
    hooks = [model.modality_trunks[k].register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k in SENSOR_KEYS]
    with torch.no_grad():
        out = model({Modality.LIDAR: _inputs(keys=["lidar"])["lidar"], "audio": None})
    for h in hooks:
        h.remove()
    assert calls == ["lidar"]
    assert "camera" not in out and "lidar" in out
    assert out["present"][0].tolist() == [0.0, 1.0, 0.0, 0.0]
    # only the present modality gets weight
    np.testing.assert_allclose(out["weights"][:, 1].numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(out["fused"].norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_absent_modalities_do_not_change_fusion_input(model):
    """The fused output must not depend on data of a modality marked absent."""
    x = _inputs(b=2)
    tokens, _ = model.tokens(x)
    present = torch.tensor([[1.0, 0.0, 1.0, 0.0]] * 2)
    garbage = tokens.clone()
    garbage[:, 1] = torch.randn(2, 384)
    garbage[:, 3] = 5.0
    with torch.no_grad():
        f1, w1 = model.fusion(tokens * present[..., None], present)
        f2, w2 = model.fusion(garbage, present)
    torch.testing.assert_close(f1, f2)
    torch.testing.assert_close(w1, w2)
    assert float(w1[:, [1, 3]].abs().max()) < 1e-6


def test_fusion_with_nothing_present_is_finite(model):
    with torch.no_grad():
        f, w = model.fusion(torch.zeros(2, 4, 384), torch.zeros(2, 4))
    assert torch.isfinite(f).all() and torch.isfinite(w).all()
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(f.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_nan_input_gives_finite_embedding(model):
    x = _inputs(b=1, keys=["camera"])["camera"]
    x[0, 0, :10, :10] = float("nan")
    with torch.no_grad():
        e = model.encode("camera", x)
    assert torch.isfinite(e).all()


def test_no_modality_is_an_error(model):
    with pytest.raises(ValueError, match="no sensor modality"):
        model({"camera": None})


def test_event_head_and_caption_shapes(model):
    hist = torch.nn.functional.normalize(torch.randn(2, 10, 384), dim=-1)
    with torch.no_grad():
        p = model.event_head(hist)
    assert p.shape == (2, len(EVENT_TYPES), len(EVENT_HORIZONS))
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
    toks = torch.tensor([[BOS, 5, 6, 7], [BOS, 4, 4, PAD]])
    with torch.no_grad():
        logits = model.caption_decoder(torch.randn(2, 384), toks)
    assert logits.shape == (2, 4, 20)
    # causal: changing a later token does not change earlier logits
    toks2 = toks.clone()
    toks2[:, 3] = 9
    with torch.no_grad():
        logits2 = model.caption_decoder(torch.randn(2, 384).mul(0).add(1), toks2)
        logits1 = model.caption_decoder(torch.randn(2, 384).mul(0).add(1), toks)
    torch.testing.assert_close(logits1[:, :3], logits2[:, :3])
    assert model.caption_decoder.greedy(torch.randn(2, 384)).shape[0] == 2


def test_default_model_within_jetson_budget():
    """All encoders together <= 25M params and <= 1.5 GMACs per fused frame (the issue's limit);
    the design aims for a few M params so CPU training fits."""
    m = build_model(ModelConfig())
    enc_params = sum(count_params(m.modality_trunks[k]) + count_params(m.modality_heads[k]) for k in SENSOR_KEYS)
    macs = encoder_macs(m, SHAPES)
    assert enc_params <= 25_000_000 and sum(macs.values()) <= 1_500_000_000
    assert count_params(m) < 6_000_000  # the whole model, decoder included, stays a few MB
    assert all(v > 0 for v in macs.values())


def test_mac_counter_counts_a_known_conv():
    m = build_model(tiny_config())
    stem = m.modality_trunks["camera"].features[0]  # 3->8, 4x4 patchify, stride 4 on 128x128 -> 32x32
    total = []
    h = stem.register_forward_hook(lambda mod, i, o: total.append(o.numel() * 3 * 16))
    encoder_macs(m, SHAPES)
    h.remove()
    assert total[0] == 8 * 32 * 32 * 48


def test_vocab_roundtrip_and_specials():
    v = Vocab.build(["A dog is barking.", "a car is ahead"])
    assert v.tokens[:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
    ids = v.encode("a dog is ahead", max_len=8)
    assert ids[0] == BOS and EOS in ids and len(ids) == 8 and ids[-1] == PAD
    assert v.decode(ids[1:]) == "a dog is ahead"
    assert v.decode(v.encode("a zebra", 6)[1:]) == "a <unk>"
    with pytest.raises(ValueError):
        Vocab(["a", "b", "c", "d"])


def test_checkpoint_roundtrip_and_corruption(tmp_path, model):
    v = Vocab.build(["a dog"])
    p = tmp_path / "ck.pt"
    digest = save_checkpoint(p, model, v, {"note": "x"})
    m2, v2, info = load_checkpoint(p)
    assert info["sha256"] == digest and info["metadata"]["note"] == "x" and v2.tokens == v.tokens
    x = _inputs(b=1)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["fused"], m2(x)["fused"])
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="sha256"):
        load_checkpoint(p)
    with pytest.raises(ValueError, match="cannot read"):
        load_checkpoint(p, verify=False)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_config_rejects_unknown_keys():
    d = tiny_config().to_dict()
    assert ModelConfig.from_dict(d).to_dict() == d
    d["fusion"]["hiden"] = 3
    with pytest.raises(ValueError, match="hiden"):
        ModelConfig.from_dict(d)


def test_residual_fusion_is_the_mean_of_present_tokens_plus_attention():
    """A fresh residual fusion starts as (gains 1) the mean of the present embeddings plus the
    attention output; changing an absent token never moves it and weights stay a distribution."""
    from mmfusion_ros.model.config import FusionConfig
    from mmfusion_ros.model.fusion import AttentionFusion

    torch.manual_seed(0)
    fus = AttentionFusion(FusionConfig(hidden=32, heads=2, residual=True), 384).eval()
    tok = torch.nn.functional.normalize(torch.randn(3, 4, 384), dim=-1)  # (B, 4, D)
    present = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    with torch.no_grad():
        fused, w = fus(tok * present[..., None], present)
        # with the attention gain switched off, the fused vector is exactly the normalised mean
        fus.log_att.fill_(-30.0)
        mean_only, w0 = fus(tok * present[..., None], present)
    mean = (tok * present[..., None]).sum(1) / present.sum(1, keepdim=True)  # (B, D)
    torch.testing.assert_close(mean_only, torch.nn.functional.normalize(mean, dim=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(w0, present / present.sum(1, keepdim=True), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-5)
    assert float((w * (1 - present)).abs().max()) < 1e-6  # absent modalities get no share
    np.testing.assert_allclose(fused.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    # the single-modality case is that modality's own direction
    assert float(torch.nn.functional.cosine_similarity(fused[2], tok[2, 2], dim=0)) > 0.99


def test_legacy_fusion_config_loads_without_residual():
    """Checkpoints saved before the residual fusion existed keep attention-only pooling."""
    d = tiny_config().to_dict()
    assert d["fusion"]["residual"] is True  # new models are residual
    del d["fusion"]["residual"]
    cfg = ModelConfig.from_dict(d)
    assert cfg.fusion.residual is False
    m = build_model(cfg)
    assert not m.fusion.residual and not hasattr(m.fusion, "log_gain")


def test_skill_prior_fusion_is_the_labels_weighted_mean_turned_by_a_bounded_attention(tmp_path):
    """With a fixed prior the fused vector is the skill-weighted mean of the present sensors (what the published
    labels read) plus the unit attention output times its gain: at gain 0.1 it stays within that distance of the
    mean whatever the attention learned; a sensor with prior 0 (the IMU) moves it only through attention; an
    IMU-only frame is finite; the prior survives a checkpoint round trip without being in the state dict."""
    from mmfusion_ros.model.config import FusionConfig
    from mmfusion_ros.model.fusion import AttentionFusion

    torch.manual_seed(0)
    prior = [0.8, 0.05, 0.85, 0.0]
    fus = AttentionFusion(FusionConfig(hidden=32, heads=2, residual=True, prior=prior, attention_gain=0.1), 384).eval()
    with torch.no_grad():
        fus.delta.weight.normal_(0.0, 5.0)  # a refinement grown large, as a caption objective grows it
    tok = torch.nn.functional.normalize(torch.randn(3, 4, 384), dim=-1)  # (B, 4, D)
    present = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]])
    with torch.no_grad():
        fused, w = fus(tok * present[..., None], present)
    p = torch.tensor(prior) * present
    mean = (tok * p[..., None]).sum(1) / p.sum(1, keepdim=True).clamp_min(1e-6)  # (B, D)
    for b in range(2):
        cos = float(torch.nn.functional.cosine_similarity(fused[b], mean[b], dim=0))
        assert cos > 0.99 * (1 - 0.1 / float(mean[b].norm())), cos  # attention turns it by at most its gain
    assert torch.isfinite(fused).all() and torch.isfinite(w).all()
    np.testing.assert_allclose(fused.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    np.testing.assert_allclose(w.sum(-1).numpy(), 1.0, atol=1e-5)
    assert not hasattr(fus, "log_gain") and "prior" not in fus.state_dict()
    with pytest.raises(ValueError, match="prior"):
        AttentionFusion(FusionConfig(residual=True, prior=[1.0, 1.0]), 384)

    cfg = tiny_config(vocab_size=20)
    cfg.fusion.prior = prior
    m = build_model(cfg).eval()
    path = tmp_path / "c.pt"
    save_checkpoint(path, m, Vocab.build(["a dog sits ahead ."]), {})
    back, _, _ = load_checkpoint(path)
    torch.testing.assert_close(back.fusion.prior, torch.tensor(prior))


def test_label_orthogonal_fusion_labels_as_the_skill_weighted_mean_does(tmp_path):
    """With the attention output orthogonal to the prompts' span, every prompt's cosine to the fused vector is
    its cosine to the prior-weighted mean times one factor: the zero-shot label is the mean's, however large the
    attention is; the rest of the attention output stays, and the basis survives a checkpoint round trip."""
    import dataclasses

    from mmfusion_ros.model.config import FusionConfig
    from mmfusion_ros.model.export import label_orthogonal_checkpoint
    from mmfusion_ros.model.fusion import AttentionFusion

    torch.manual_seed(0)
    prior = [0.8, 0.05, 0.85, 0.0]
    prompts = torch.nn.functional.normalize(torch.randn(9, 384), dim=-1)  # (C, D)
    tok = torch.nn.functional.normalize(torch.randn(64, 4, 384), dim=-1)  # (B, 4, D)
    present = torch.ones(64, 4)
    fused = {}
    for k in (0, 9):
        torch.manual_seed(1)
        fus = AttentionFusion(FusionConfig(hidden=32, heads=2, residual=True, prior=prior, attention_gain=3.0,
                                           label_orthogonal=k), 384).eval()
        with torch.no_grad():
            fus.delta.weight.normal_(0.0, 5.0)
        if k:
            fus.set_label_basis(prompts)
        with torch.no_grad():
            fused[k] = fus(tok, present)[0]
    p = torch.tensor(prior)
    mean = (tok * p[None, :, None]).sum(1) / p.sum()  # (B, D)
    want = (mean @ prompts.T).argmax(1)
    assert torch.equal((fused[9] @ prompts.T).argmax(1), want)
    assert not torch.equal((fused[0] @ prompts.T).argmax(1), want)  # a gain of 3 moves labels without it
    assert float(torch.nn.functional.cosine_similarity(fused[9], fused[0]).mean()) > 0.5  # attention still counts
    with pytest.raises(ValueError, match="fixed prior"):
        AttentionFusion(FusionConfig(residual=True, label_orthogonal=9), 384)
    with pytest.raises(ValueError, match="linearly dependent"):
        fus.set_label_basis(torch.cat([prompts[:8], prompts[:1]]))

    cfg = tiny_config(vocab_size=20)
    cfg.fusion = dataclasses.replace(cfg.fusion, residual=True, prior=prior)
    m = build_model(cfg).eval()
    src = tmp_path / "src" / "checkpoint.pt"
    save_checkpoint(src, m, Vocab.build(["a dog sits ahead ."]), {})
    dst = label_orthogonal_checkpoint(src, tmp_path / "out", prompt_embeddings=prompts.numpy())
    back, _, info = load_checkpoint(dst)
    assert back.cfg.fusion.label_orthogonal == 9 and info["metadata"]["label_orthogonal"]["prompts"][0] == "person"
    basis = back.fusion.label_basis
    torch.testing.assert_close(basis @ basis.T, torch.eye(9), atol=1e-5, rtol=0)
    resid = prompts - (prompts @ basis.T) @ basis  # the prompts lie in the stored span
    assert float(resid.abs().max()) < 1e-5
    torch.testing.assert_close(back.fusion.delta.weight, m.fusion.delta.weight)  # weights carried over


def test_train_config_rejects_a_skill_prior_without_the_residual_fusion():
    from mmfusion_ros.train.config import TrainConfig

    with pytest.raises(ValueError, match="fusion_residual"):
        TrainConfig.from_dict({"fusion_residual": False, "fusion_prior": "skill"})
    with pytest.raises(ValueError, match="fusion_prior"):
        TrainConfig.from_dict({"fusion_prior": "learned"})
    with pytest.raises(ValueError, match="attention_gain"):
        TrainConfig.from_dict({"fusion_attention_gain": 0.0})
