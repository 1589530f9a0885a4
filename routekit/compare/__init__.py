"""The comparison harness's building blocks: likelihood metrics, behaviour shares, activation
sparsity and the statistics that verdicts rest on."""
