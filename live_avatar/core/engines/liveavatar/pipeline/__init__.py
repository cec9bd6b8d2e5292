"""The liveavatar step pipeline over N devices (``--num_gpus_dit N``, issue 9).

The four denoising steps of a block are spread over N ranks, one process per device
(torch.distributed: gloo on CPU, NCCL available on GPU). Block k+1 enters rank 0 while block k is further
down; only a block's latents and audio tokens cross ranks, and every KV ring stays on its step's rank.

* :mod:`.plan`       which rank runs which steps, and where the VAE decodes (no torch; preflight uses it)
* :mod:`.transport`  pickled messages between ranks over torch.distributed, a receiver thread per rank
* :mod:`.rank_parts` the models one rank loads (the DiT; the VAE only on the decoding rank)
* :mod:`.worker`     what a rank does with a message (steps, VAE decode, sink refresh); the ranks' main loop
* :mod:`.launcher`   starts ranks 1..N-1 (or joins a torchrun world) and watches them
* :mod:`.driver`     rank 0's per-session generator: ``submit`` / ``collect`` / ``generate``
"""
