"""The benchmarks, one module each, behind one command (`tuner bench`, tuner.bench.cli):
throughput (the trial loop against the tutorial's), pipelines (an image folder against the d2l
chapter's input), packing (trials sharing a device), overhead (a sweep's fixed cost), grid (the plain
lr grid a comparison must beat), epochcost (a trial-epoch, phase by phase), flops (per stem);
common holds what they share."""
