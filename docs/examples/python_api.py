"""The Python API: the catalog and a study, as the documentation shows them."""

import torch

import actlab

act = actlab.get("leaky_relu(negative_slope=0.2)")  # a fresh nn.Module
fn = actlab.get_fn("expr:x * sigmoid(1.702 * x)")  # your own, from a safe formula
print(act, fn(torch.tensor([-1.0, 0.0, 1.0])))

# One stacked model, 3 activations x 2 seeds; the metrics rows come back as a DataFrame.
df = actlab.compare(
    dataset="digits", activations=["relu", "gelu", "tanh"], seeds=2, epochs=3, out="runs/api"
)
print(df.columns.tolist())
final = df[df.epoch == df.epoch.max()]
print(final.groupby("activation").test_acc.agg(["mean", "std"]).round(4))
