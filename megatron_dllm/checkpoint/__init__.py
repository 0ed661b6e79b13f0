"""The on-disk checkpoint layer: every entry point and tool reads and writes checkpoints through it.

One job per module:

    layout.py        paths, the tracker file, iteration folders, formats, run metadata (dllm_meta.json)
    errors.py        CheckpointError: a one-line message naming the fix (tools exit 2)
    safe_pickle.py   torch.load(weights_only=True) with Megatron-LM's allowances; DCP metadata allow-list
    integrity.py     checks every pickle and shard of a torch_dist folder before anything is loaded
    dist_load.py     dist_checkpointing.load with safe metadata / byte-item / common.pt readers
    dcp_io.py        torch_dist box reader (torch.distributed.checkpoint.load) and streaming writer
    save_dir.py      a run's --save folder: refuse foreign checkpoints, stale .tmp clean-up, pruning
    output.py        output folders of the tools: never overwrite, appear atomically
    state.py         save / load of a training run's state (model, optimizer, scheduler, RNG)

``state`` imports megatron-core; import it as ``megatron_dllm.checkpoint.state``. The other modules
stay light so that tools can check paths before torch is imported.
"""
