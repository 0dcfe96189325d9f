"""Plot the training loss and the dev F1 curves of a train_log.jsonl into a PNG."""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("log")
parser.add_argument("png")
args = parser.parse_args()
records = [json.loads(line) for line in open(args.log, encoding="utf8") if line.strip()]
train = [r for r in records if "loss" in r]
evals = [r for r in records if "eval" in r]
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot([r["step"] for r in train], [r["loss"] for r in train], color="tab:blue", lw=1, label="train loss")
ax.set_xlabel("step")
ax.set_ylabel("loss", color="tab:blue")
ax.set_yscale("log")
if evals:
    ax2 = ax.twinx()
    steps = [r["step"] for r in evals]
    ax2.plot(steps, [100 * r["eval"]["f1_string"] for r in evals], "o-", color="tab:red", label="dev F1 (string)")
    ax2.plot(steps, [100 * r["eval"]["f1_span"] for r in evals], "s--", color="tab:orange", label="dev F1 (span)")
    ax2.set_ylabel("dev F1", color="tab:red")
    ax2.set_ylim(0, 100)
    ax2.legend(loc="lower right")
ax.legend(loc="upper right")
ax.set_title("PaDeLLM LoRA training")
fig.tight_layout()
fig.savefig(args.png, dpi=110)
print(f"{len(train)} loss points, {len(evals)} dev evaluations -> {args.png}")
