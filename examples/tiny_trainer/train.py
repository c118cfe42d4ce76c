#!/usr/bin/env python3
"""A tiny but real trainer that honours the collection's training contract on a CPU.

A 2-layer MLP (tanh hidden layer, linear output) learns a fixed synthetic regression task with
mini-batch SGD + momentum, in plain Python: the hosts have only ``python3``, no numpy or torch.
It speaks Hugging Face Trainer's dialect (argument names, dict-repr log lines, the summary line,
``checkpoint-<step>/trainer_state.json``) so the collection's HF parsing is exercised as is, and
it has switches that make it diverge, crash or hang so every failure path can be shown.
See docs/training-contract.md and the README next to this file.
"""

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

INPUT_SIZE, HIDDEN_SIZE, NUM_SAMPLES = 4, 8, 256
DATA_SEED = 0  # the dataset is fixed, like a real one; --seed only changes init and batch order
DIVERGE_FACTOR = 20.0  # beyond the stable step size for this model: loss grows instead of shrinking
CHECKPOINT_FILES = {"model": "model.json", "optimizer": "optimizer.json", "rng": "rng_state.json",
                    "trainer": "trainer_state.json"}  # the state key each file holds


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_steps", type=int, default=400)
    p.add_argument("--logging_steps", type=int, default=10)
    p.add_argument("--save_steps", type=int, default=50)
    p.add_argument("--save_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    p.add_argument("--learning_rate", type=float, default=0.05)
    p.add_argument("--per_device_train_batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint directory, or 'latest'")
    p.add_argument("--step_seconds", type=float, default=0.0, help="sleep per step to simulate real work")
    p.add_argument("--save_mode", choices=("atomic", "inplace"), default="atomic",
                   help="atomic: a staging directory renamed into place; inplace: straight into checkpoint-<step>, "
                        "trainer_state.json last, as Hugging Face's Trainer does (a kill mid-save leaves half of one)")
    p.add_argument("--save_file_seconds", type=float, default=0.0,
                   help="sleep after writing each checkpoint file (a slow disk; widens the mid-save window)")
    p.add_argument("--report_reward", action="store_true", help="also log a 'reward' metric (RL-style)")
    p.add_argument("--diverge", action="store_true", help="blow the learning rate up so loss rises")
    p.add_argument("--logging_nan_inf_filter", type=lambda v: v.strip().lower() in ("1", "true", "yes"),
                   default=True, help="as Hugging Face's Trainer (true by default): a NaN or inf step loss counts as "
                                      "the window's average so far, so a window of them logs 0.0")
    p.add_argument("--nan_at_step", type=int, default=None,
                   help="poison the weights with NaN at step N (an fp16 overflow): every later loss is nan")
    p.add_argument("--crash_at_step", type=int, default=None, help="raise an exception during step N")
    p.add_argument("--hang_at_step", type=int, default=None, help="stop making progress at step N, forever")
    p.add_argument("--gpu_mem_gib", type=float, default=0.0,
                   help="act as a GPU job whose allocated peak is this many GiB: logged as max_memory_allocated "
                        "and declared to vastsim's nvidia-smi (with the allocator's reserve and a CUDA context)")
    args = p.parse_args(argv)
    for name in ("max_steps", "logging_steps", "save_steps", "per_device_train_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        p.error("--save_total_limit must be at least 1")
    return args


def make_dataset():
    """A smooth nonlinear target with a little noise: learnable by the MLP, not by a line."""
    rng = random.Random(DATA_SEED)
    data = []
    for _sample in range(NUM_SAMPLES):
        x = [rng.gauss(0.0, 1.0) for _input in range(INPUT_SIZE)]
        y = math.sin(x[0]) + 0.5 * x[1] * x[2] - 0.3 * x[3] + rng.gauss(0.0, 0.05)
        data.append((x, y))
    return data


# Parameters live in one flat list (W1 row-major, b1, w2, b2) so the optimizer is a plain loop.
W1, B1 = 0, HIDDEN_SIZE * INPUT_SIZE
W2 = B1 + HIDDEN_SIZE
B2 = W2 + HIDDEN_SIZE
NUM_PARAMS = B2 + 1


def init_params(rng):
    scale = 1.0 / math.sqrt(INPUT_SIZE)  # keeps tanh out of saturation at the start
    params = [rng.uniform(-scale, scale) for _weight in range(B1)] + [0.0] * HIDDEN_SIZE
    return params + [rng.uniform(-0.5, 0.5) for _weight in range(HIDDEN_SIZE)] + [0.0]


def loss_and_grad(params, batch):
    """Mean squared error over the batch, its gradient (hand-written backprop), and a reward."""
    grad = [0.0] * NUM_PARAMS
    loss = reward = 0.0
    n = len(batch)
    for x, y in batch:
        hidden = []
        for j in range(HIDDEN_SIZE):
            row = W1 + j * INPUT_SIZE
            z = params[B1 + j] + sum(params[row + k] * x[k] for k in range(INPUT_SIZE))
            hidden.append(math.tanh(z))
        err = params[B2] + sum(params[W2 + j] * hidden[j] for j in range(HIDDEN_SIZE)) - y
        sq = err * err  # not err ** 2: that raises OverflowError once --diverge has blown up
        loss += sq / n
        reward += math.exp(-min(sq, 700.0)) / n  # in (0, 1], rises as predictions get closer
        d_out = 2.0 * err / n
        grad[B2] += d_out
        for j in range(HIDDEN_SIZE):
            grad[W2 + j] += d_out * hidden[j]
            d_z = d_out * params[W2 + j] * (1.0 - hidden[j] * hidden[j])
            grad[B1 + j] += d_z
            row = W1 + j * INPUT_SIZE
            for k in range(INPUT_SIZE):
                grad[row + k] += d_z * x[k]
    return loss, grad, reward


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)  # floats round-trip exactly, so a resumed run continues bit for bit
        f.flush()
        os.fsync(f.fileno())


def checkpoint_step(name):
    """The step of a 'checkpoint-<step>' directory name, or None for anything else."""
    prefix, _dash, step = name.partition("-")
    return int(step) if prefix == "checkpoint" and step.isdigit() else None


def list_checkpoints(output_dir):
    steps = sorted((checkpoint_step(n), n) for n in os.listdir(output_dir) if checkpoint_step(n) is not None)
    return [os.path.join(output_dir, n) for _step, n in steps]


def save_checkpoint(output_dir, state, limit, mode="atomic", file_seconds=0.0):
    """Write checkpoint-<step>/: atomically (a reader never sees half a checkpoint), or in place with
    trainer_state.json last, as Hugging Face's Trainer does (a reader must wait for that file)."""
    final = os.path.join(output_dir, f"checkpoint-{state['trainer']['global_step']}")
    if mode == "inplace":
        os.makedirs(final, exist_ok=True)
        for key, name in CHECKPOINT_FILES.items():  # dicts keep their order: trainer_state.json is last
            write_json(os.path.join(final, name), state[key])
            if file_seconds > 0:
                time.sleep(file_seconds)
        _rotate(output_dir, limit)
        return
    tmp = os.path.join(output_dir, f".tmp-{os.path.basename(final)}-{os.getpid()}")  # outside checkpoint-*
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for key, name in CHECKPOINT_FILES.items():
        write_json(os.path.join(tmp, name), state[key])
    if os.path.exists(final):  # a resumed run passing a step again replaces the older copy
        old = tmp + ".old"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old)
    else:
        os.rename(tmp, final)
    if file_seconds > 0:
        time.sleep(file_seconds * len(CHECKPOINT_FILES))
    _rotate(output_dir, limit)


def _rotate(output_dir, limit):
    if limit is not None:
        for path in list_checkpoints(output_dir)[:-limit]:
            shutil.rmtree(path)


def fail(message):
    """A clear one-line error and exit 2, without a traceback (the collection reads a traceback as a crash)."""
    print(f"train.py: error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def load_checkpoint(output_dir, where):
    """Read a checkpoint back; anything missing or malformed is a clear error, not a traceback."""
    if where == "latest":
        found = list_checkpoints(output_dir) if os.path.isdir(output_dir) else []
        if not found:
            fail(f"--resume_from_checkpoint latest: no checkpoint-* in {output_dir}")
        where = found[-1]
    if not os.path.isdir(where):
        fail(f"--resume_from_checkpoint: {where} is not a directory")
    state = {}
    try:
        for key, name in CHECKPOINT_FILES.items():
            with open(os.path.join(where, name)) as f:
                state[key] = json.load(f)
        ok = (len(state["model"]["params"]) == NUM_PARAMS
              and len(state["optimizer"]["momentum_buffer"]) == NUM_PARAMS
              and isinstance(state["trainer"]["global_step"], int)
              and sorted(state["rng"]["order"]) == list(range(NUM_SAMPLES))
              and 0 <= state["rng"]["position"] <= NUM_SAMPLES)
        version, internal, gauss = state["rng"]["random_state"]  # JSON turned random's tuples into lists
        state["rng"]["random_state"] = (version, tuple(internal), gauss)
        random.Random().setstate(state["rng"]["random_state"])  # validates it here, not mid-run
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        fail(f"--resume_from_checkpoint: {where} is not a usable checkpoint ({e})")
    if not ok:
        fail(f"--resume_from_checkpoint: {where} does not fit this model")
    return where, state


def declare_gpu_memory(gib):
    """Tell vastsim's nvidia-smi what this process holds (its documented gpu-processes/ directory); a no-op
    where nvidia-smi is not vastsim's. A real job on a real GPU needs none of this."""
    if gib <= 0:
        return
    smi = shutil.which("nvidia-smi")
    directory = os.environ.get("VASTSIM_GPU_PROCESSES") or (
        os.path.join(os.path.dirname(os.path.realpath(smi)), "gpu-processes") if smi else None)
    if directory is None:
        return
    try:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, str(os.getpid())), "w") as f:
            json.dump({"used_mib": int(gib * 1.12 * 1024 + 500), "gpu": 0, "name": "python3"}, f)
    except OSError:
        pass  # not vastsim's, or not writable: nothing to declare to


def hf_line(metrics):
    print(repr(metrics), flush=True)  # HF Trainer prints exactly a dict repr; the collection parses that


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    for name in os.listdir(args.output_dir):  # half-written checkpoints of a run that was killed mid-save
        if name.startswith(".tmp-checkpoint-"):
            shutil.rmtree(os.path.join(args.output_dir, name), ignore_errors=True)
    declare_gpu_memory(args.gpu_mem_gib)
    data = make_dataset()
    lr0 = args.learning_rate * (DIVERGE_FACTOR if args.diverge else 1.0)
    batch_size = args.per_device_train_batch_size
    rng = random.Random(args.seed)
    params = init_params(rng)
    momentum = [0.0] * NUM_PARAMS
    order, pos = list(range(len(data))), len(data)  # pos at the end: the first step shuffles
    trainer = {"global_step": 0, "max_steps": args.max_steps, "logging_steps": args.logging_steps,
               "save_steps": args.save_steps, "train_batch_size": batch_size, "epoch": 0.0, "log_history": [],
               # running sums, so a resumed run logs the same averages as an uninterrupted one
               "interval_loss": 0.0, "interval_reward": 0.0, "interval_steps": 0, "total_loss": 0.0}
    if args.resume_from_checkpoint:
        where, state = load_checkpoint(args.output_dir, args.resume_from_checkpoint)
        params, momentum = state["model"]["params"], state["optimizer"]["momentum_buffer"]
        rng.setstate(state["rng"]["random_state"])
        order, pos = state["rng"]["order"], state["rng"]["position"]
        trainer.update(state["trainer"])
        # the schedule follows this invocation's arguments (e.g. a longer --max_steps continues a run)
        trainer.update(max_steps=args.max_steps, logging_steps=args.logging_steps, save_steps=args.save_steps)
        print(f"Resuming from {where} at step {trainer['global_step']}", file=sys.stderr, flush=True)
    start_step, started = trainer["global_step"], time.time()
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")

    for step in range(start_step + 1, args.max_steps + 1):
        if args.hang_at_step == step:
            while True:  # a real hang: alive, silent, no progress, never exits (SIGTERM/SIGKILL ends it)
                time.sleep(3600)
        if args.crash_at_step == step:
            raise RuntimeError(f"simulated failure at step {step} (--crash_at_step)")
        batch = []
        for _item in range(batch_size):
            if pos >= len(order):  # a new epoch: reshuffle with the seeded rng (its state is checkpointed)
                rng.shuffle(order)
                pos = 0
            batch.append(data[order[pos]])
            pos += 1
        if args.nan_at_step == step:
            params[0] = math.nan  # as one overflowing step does: NaN spreads through every later update
        loss, grad, reward = loss_and_grad(params, batch)
        # HF's default schedule: linear decay to zero over max_steps. No gradient clipping, so --diverge diverges.
        lr = lr0 * (1.0 - (step - 1) / args.max_steps)
        for i in range(NUM_PARAMS):
            momentum[i] = 0.9 * momentum[i] + grad[i]
            params[i] -= lr * momentum[i]
        trainer.update(global_step=step, epoch=step * batch_size / len(data))
        if args.logging_nan_inf_filter and not math.isfinite(loss):
            loss = trainer["interval_loss"] / (1 + trainer["interval_steps"])  # HF's: the window's average so far
        trainer["interval_loss"] += loss
        trainer["interval_reward"] += reward
        trainer["interval_steps"] += 1
        trainer["total_loss"] += loss
        if args.step_seconds > 0:
            time.sleep(args.step_seconds)

        if step % args.logging_steps == 0 or step == args.max_steps:
            n = trainer["interval_steps"]
            logs = {"loss": round(trainer["interval_loss"] / n, 4),
                    "grad_norm": math.sqrt(sum(g * g for g in grad)), "learning_rate": lr}
            if args.report_reward:
                logs["reward"] = round(trainer["interval_reward"] / n, 4)
            logs.update(epoch=round(trainer["epoch"], 4), step=step)
            if args.gpu_mem_gib > 0:
                logs["max_memory_allocated"] = int(args.gpu_mem_gib * 2**30)
            hf_line(logs)
            with open(metrics_path, "a") as f:
                f.write(json.dumps({"step": step, **{k: v for k, v in logs.items() if k != "step"}}) + "\n")
            trainer["log_history"].append(logs)
            trainer.update(interval_loss=0.0, interval_reward=0.0, interval_steps=0)
        if step % args.save_steps == 0 or step == args.max_steps:
            save_checkpoint(args.output_dir, {
                "model": {"input_size": INPUT_SIZE, "hidden_size": HIDDEN_SIZE, "params": params},
                "optimizer": {"type": "sgd", "momentum": 0.9, "learning_rate": lr0, "momentum_buffer": momentum},
                "rng": {"random_state": list(rng.getstate()), "order": order, "position": pos},
                "trainer": trainer}, args.save_total_limit, args.save_mode, args.save_file_seconds)

    runtime = max(time.time() - started, 1e-9)
    steps_run = max(args.max_steps - start_step, 0)
    hf_line({"train_runtime": round(runtime, 4),
             "train_samples_per_second": round(steps_run * batch_size / runtime, 3),
             "train_steps_per_second": round(steps_run / runtime, 3),
             "train_loss": round(trainer["total_loss"] / max(trainer["global_step"], 1), 4),
             "epoch": round(trainer["epoch"], 4)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
