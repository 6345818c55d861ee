"""QLoRA + LongLoRA fine-tuning of a transformers causal LM with loraops.

The base model's linears are quantized to NF4 (loraops' quantizer, bitsandbytes'
format), peft adds LoRA adapters that run through loraops' fused op, attention is
LongLoRA's shifted short attention in training, and the embeddings and norms
train beside the adapters (saved with them). One process, or several under
torchrun with DDP or FSDP2 (which shards the NF4 weights too).

    python examples/finetune/finetune.py                         # tiny random Qwen2, synthetic text, CPU
    torchrun --nproc_per_node=2 examples/finetune/finetune.py --parallel fsdp
    python examples/finetune/finetune.py --model PATH --dataset corpus.txt --seq-len 8192 --device cuda

Writes to --output: the adapter (peft's files, with the embeddings and norms),
metrics.json (loss per step, tokens/s, NF4 bytes and peak memory per rank),
loss.png, and eval_logits.pt (the trained model's logits on a fixed batch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import time
from pathlib import Path

import torch
import torch.distributed as dist

DEFAULT_TEXT_SEED = 1234


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="a transformers model path or name (default: a tiny random Qwen2 "
                   "built in code, no download)")
    p.add_argument("--hidden-size", type=int, default=128, help="the built-in model's width (heads of 32)")
    p.add_argument("--layers", type=int, default=2, help="the built-in model's depth")
    p.add_argument("--dataset", default=None, help="a UTF-8 text file (default: synthetic text)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="sequences per step across all processes")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank")
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--lora-dropout", type=float, default=0.0)
    p.add_argument("--group-size-ratio", type=float, default=0.25, help="S2-Attn group size / sequence length")
    p.add_argument("--blocksize", type=int, default=64, help="NF4 block size")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="the base model's dtype")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "npu"])
    p.add_argument("--parallel", default="auto", choices=["auto", "none", "ddp", "fsdp"],
                   help="auto: DDP under torchrun, none otherwise")
    p.add_argument("--no-fuse", action="store_true", help="peft's own LoRA forward (for comparison)")
    p.add_argument("--no-s2", action="store_true", help="the model's full attention in training too")
    p.add_argument("--baseline", action="store_true", help="plain peft for comparison: a bitsandbytes NF4 base, "
                   "peft's own forward, full attention (needs bitsandbytes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="finetune-out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- processes
def setup_processes(args):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.parallel == "auto":
        args.parallel = "ddp" if world > 1 else "none"
    if args.parallel != "none" and world == 1 and "RANK" not in os.environ:
        raise SystemExit(f"--parallel {args.parallel} needs torchrun (e.g. torchrun --nproc_per_node=2 ...)")
    if args.device == "npu":
        import torch_npu  # noqa: F401  (registers the npu device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(args.device, local_rank) if args.device != "cpu" else torch.device("cpu")
    if args.device != "cpu":
        getattr(torch, args.device).set_device(device)
    if world > 1 or args.parallel != "none":
        backend = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}[args.device]
        dist.init_process_group(backend)
    return device, (dist.get_rank() if dist.is_initialized() else 0), world


# ----------------------------------------------------------------------------- model
def build_model(args, device):
    import transformers

    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    if args.model is None:
        config = transformers.Qwen2Config(
            vocab_size=256, hidden_size=args.hidden_size, intermediate_size=2 * args.hidden_size,
            num_hidden_layers=args.layers, num_attention_heads=args.hidden_size // 32,
            num_key_value_heads=max(1, args.hidden_size // 64), max_position_embeddings=max(args.seq_len, 256), attn_implementation="sdpa")
        model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
        tokenizer = None  # bytes are the tokens
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype, attn_implementation="sdpa")
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    return model.to(device), tokenizer


def qlora_longlora(model, args):
    """NF4 base, LoRA on every projection, S2-Attn, embeddings and norms trained."""
    import peft

    from loraops.integrations import peft as lp
    from loraops.integrations import transformers as lt

    if args.baseline:
        args.no_s2 = args.no_fuse = True
        targets = bitsandbytes_nf4(model, args)
    else:
        lt.quantize_model(model, blocksize=args.blocksize, double_quant=True, skip=("lm_head",))
        targets = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if type(m).__name__ == "NF4Linear"})
    if not args.no_s2:
        lt.enable_s2_attention(model, group_size_ratio=args.group_size_ratio)
    config = peft.LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                             target_modules=targets, modules_to_save=lt.longlora_modules_to_save(model))
    model = peft.get_peft_model(model, lp.register_nf4_linear(config))
    lt.mark_embeddings_and_norms_trainable(model)
    report = lp.fuse(model) if not args.no_fuse else None
    return model, report


def bitsandbytes_nf4(model, args) -> list:
    """The baseline's base: bitsandbytes Linear4bit layers (as transformers' 4-bit loading makes)."""
    import bitsandbytes as bnb

    targets = set()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and name != "lm_head":
                layer = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                          compute_dtype=child.weight.dtype, compress_statistics=True,
                                          quant_type="nf4", device="cpu")
                layer.load_state_dict(child.state_dict())
                setattr(parent, name, layer.to(child.weight.device))
                targets.add(name)
    return sorted(targets)


def load_trained(args, adapter_dir, device="cpu"):
    """The base model quantized again (the same codes: quantization is
    deterministic) with the saved adapter, embeddings and norms, for inference."""
    import peft

    from loraops.integrations import peft as lp
    from loraops.integrations import transformers as lt

    model, _ = build_model(args, torch.device(device))
    lt.quantize_model(model, blocksize=args.blocksize, double_quant=True, skip=("lm_head",))
    config = lp.register_nf4_linear(peft.LoraConfig.from_pretrained(adapter_dir))
    return peft.PeftModel.from_pretrained(model, adapter_dir, config=config).eval()


def shard(model, args):
    if args.parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                fully_shard(module)
        fully_shard(model)
        return model
    if args.parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model)
    return model


def nf4_bytes(model) -> int:
    """Bytes of NF4 codes and scales this process holds (its shards under FSDP2)."""
    total = 0
    for name, p in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("weight_packed", "weight_absmax", "weight_nested_absmax"):
            local = p.to_local() if hasattr(p, "to_local") else p
            total += local.numel() * local.element_size()
    return total


# ----------------------------------------------------------------------------- data
def synthetic_text(n_chars: int, seed: int) -> bytes:
    """Text with structure to learn: words from a small vocabulary, a fixed
    random bigram grammar between them."""
    gen = torch.Generator().manual_seed(seed)
    letters = torch.randint(97, 123, (64, 6), generator=gen)
    lengths = torch.randint(2, 7, (64,), generator=gen)
    words = [bytes(letters[i, : lengths[i]].tolist()) for i in range(64)]
    successors = torch.randint(0, 64, (64, 3), generator=gen)
    out, w = [], 0
    while sum(len(x) + 1 for x in out) < n_chars:
        out.append(words[w])
        w = int(successors[w, torch.randint(0, 3, (1,), generator=gen)])
    return b" ".join(out)[:n_chars]


def token_stream(args, tokenizer) -> torch.Tensor:
    if args.dataset is not None:
        text = Path(args.dataset).read_text(encoding="utf-8")
        if tokenizer is not None:
            return torch.tensor(tokenizer(text)["input_ids"], dtype=torch.long)
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)
    if tokenizer is not None:
        raise SystemExit("--model given without --dataset: pass a text file to train on")
    need = (args.steps + 1) * args.batch_size * args.seq_len + 1
    return torch.tensor(list(synthetic_text(need, DEFAULT_TEXT_SEED)), dtype=torch.long)


def batches(tokens: torch.Tensor, args, rank: int, world: int):
    """Step s's global batch is the same whatever the world size; each process
    takes its rows of it."""
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} must be a multiple of the {world} processes")
    per_rank = args.batch_size // world
    chunks = (tokens.numel() - 1) // args.seq_len
    if chunks < args.batch_size:
        raise SystemExit(f"the dataset holds {chunks} sequences of {args.seq_len} tokens; a step needs "
                         f"{args.batch_size}")
    step = 0
    while True:
        rows = [(step * args.batch_size + rank * per_rank + i) % chunks for i in range(per_rank)]
        yield torch.stack([tokens[r * args.seq_len:(r + 1) * args.seq_len] for r in rows])
        step += 1


# ----------------------------------------------------------------------------- training
def all_mean(value: float, world: int) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / world


def gather(value) -> list:
    if not dist.is_initialized():
        return [value]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def peak_memory_mib(device) -> float:
    if device.type in ("cuda", "npu"):
        return getattr(torch, device.type).max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def full_state_dict(model) -> dict:
    """The whole model's tensors, gathered from FSDP2's shards (every process calls it)."""
    from torch.distributed.tensor import DTensor

    return {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in model.state_dict().items()}


def train(args):
    device, rank, world = setup_processes(args)
    model, tokenizer = build_model(args, device)
    model, report = qlora_longlora(model, args)
    peft_model = model
    if rank == 0 and report is not None and report.fallbacks:
        print(report)
    model = shard(model, args)
    tokens = token_stream(args, tokenizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    data = batches(tokens, args, rank, world)
    losses, times = [], []
    bar = None
    if rank == 0 and not args.quiet:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, desc=f"{args.parallel} x{world}", unit="step")
    model.train()
    for _ in range(args.steps):
        ids = next(data).to(device)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(all_mean(loss.item(), world))
        if bar is not None:
            tok_s = args.batch_size * args.seq_len / times[-1]
            bar.set_postfix(loss=f"{losses[-1]:.3f}", tok_s=f"{tok_s:,.0f}")
            bar.update()
    if bar is not None:
        bar.close()

    out = Path(args.output)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    model.eval()
    eval_ids = next(batches(tokens, argparse.Namespace(**{**vars(args), "batch_size": 2}), 0, 1)).to(device)
    with torch.no_grad():
        eval_logits = model(input_ids=eval_ids).logits.float().cpu()
    state = full_state_dict(model) if args.parallel == "fsdp" else None
    nf4 = gather(nf4_bytes(peft_model))
    peaks = gather(peak_memory_mib(device))
    if rank == 0:
        peft_model.save_pretrained(out / "adapter", state_dict=state)
        torch.save({"input_ids": eval_ids.cpu(), "logits": eval_logits}, out / "eval_logits.pt")
        if state is not None:
            torch.save(state, out / "full_state_dict.pt")
        measured = times[1:] or times  # the first step warms caches up
        step_s = sorted(measured)[len(measured) // 2]
        metrics = dict(
            model=args.model or "tiny-random-qwen2", parallel=args.parallel, world_size=world, device=args.device,
            seq_len=args.seq_len, batch_size=args.batch_size, fused=not args.no_fuse, s2_attention=not args.no_s2,
            fused_layers=None if report is None else int(report), loss=losses, median_step_s=step_s,
            tokens_per_s=args.batch_size * args.seq_len / step_s, nf4_bytes_per_rank=nf4,
            peak_memory_mib_per_rank=peaks)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        plot(losses, out / "loss.png", f"{metrics['model']}, {args.parallel} x{world}")
        print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps, "
              f"{metrics['tokens_per_s']:,.0f} tokens/s, NF4 bytes per rank {nf4}; wrote {out}")
    if dist.is_initialized():
        dist.barrier()  # every process done before any tears its connections down
        dist.destroy_process_group()
    return losses


def plot(losses, path, title):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no loss.png")
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.set_ylim(bottom=0, top=max(losses) * 1.05 if losses and math.isfinite(max(losses)) else None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    train(parse_args())
