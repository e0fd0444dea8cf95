"""The core layer: models and presets, the kernel-backed attention call, kernels, statistics, the tracer and
its trace, decoder-layer discovery (TransformerLens names), VLM inputs, executors, errors.

Nothing here imports from a higher layer (analyzers, interventions, tasks, report, studies, cli);
``tests/test_layers.py`` checks it.

* :mod:`.models`: :func:`load_model`, :class:`LoadedModel`, :class:`ModelSpec`; :mod:`.presets`: model presets;
  :mod:`.support`: what the workbench refuses to load; :mod:`.devices`: device and dtype.
* :mod:`.attention`: the ``"workbench"`` attention function and its hook point (:class:`AttentionCall`, in
  :mod:`.attention_call`).
* :mod:`.kernels`: the attention kernels that return the log-sum-exp (:mod:`.reference_kernel`: the exact one in plain torch).
* :mod:`.stats`: closed-form statistics from q, k and the log-sum-exp (block loops in :mod:`.stats_exact`, the
  sampled estimate and its bound in :mod:`.stats_sampled`).
* :mod:`.tracer` / :mod:`.trace`: recording a forward pass, and the named-axis result (:mod:`.tracer_received`:
  received attention over calls; :mod:`.tracer_result`: the trace assembled).
* :mod:`.hooks`: decoder layers and their TransformerLens hook names.
* :mod:`.vlm`: inputs of vision-language models (image positions, text-only passes).
* :mod:`.tiny_models` / :mod:`.oracle`: tiny random-weight models of every architecture, and the workbench
  checked against eager attention on them (:mod:`.oracle_same_inputs`: the same-input bfloat16 criterion).
* :mod:`.executor` / :mod:`.ray_executor`: where the cells of a grid run (this process, or Ray actors).
* :mod:`.interop`: the model objects researchers hold (transformers, nnsight, TransformerLens) as a LoadedModel.
* :mod:`.headsets`: the one head-set grammar (``3.1,7.*,retrieval:top-10``) of the CLI, dashboard and studies.
* :mod:`.intervals`: confidence intervals and paired tests (scipy).
* :mod:`.gemma3`: the ``gemma3-270m`` preset.
* :mod:`.registry`: the one :class:`~.registry.Registry` class behind every lookup by name.
* :mod:`.errors`: :class:`WorkbenchError` and its one-line subclasses.
"""
