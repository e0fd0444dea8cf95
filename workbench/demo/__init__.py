"""Demo models shipped with the workbench, and their data.

* :mod:`.digits` / :mod:`.digits_vlm`: the ``digits-vlm`` LLaVA-style test model on SmolLM2-135M.
* :mod:`.easyvqa` / :mod:`.effnet_vlm`: the ``effnet-smollm2-vqa`` model on easy-VQA scenes.
"""
