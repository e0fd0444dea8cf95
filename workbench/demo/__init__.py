"""Demo models shipped with the workbench, and their data.

* :mod:`.digits` / :mod:`.digits_vlm`: the ``digits-vlm`` LLaVA-style test model on SmolLM2-135M (its parts:
  :mod:`.digits_vlm_model`, :mod:`.digits_vlm_train`).
* :mod:`.easyvqa` / :mod:`.effnet_vlm`: the ``effnet-smollm2-vqa`` model on easy-VQA scenes (parts:
  :mod:`.easyvqa_data`, :mod:`.easyvqa_scenes`; :mod:`.effnet_tower`, :mod:`.effnet_llava`, :mod:`.effnet_lora`,
  :mod:`.effnet_train`).
"""
