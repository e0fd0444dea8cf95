"""Tasks: inputs and their scoring, built from real text and images.

* :mod:`.text`: token windows of ``pydoc_data`` prose.
* :mod:`.cloze`: the multiple-choice cloze over the same prose.
* :mod:`.needle`: needle-in-a-haystack prompts.
* :mod:`.ioi`: indirect-object identification and colored-objects prompts (for :mod:`circuits`).
* :mod:`.perplexity`: perplexity on token windows.
* :mod:`.hallucination`: POPE and CHAIR on digit images; :mod:`.vqa_eval` / :mod:`.vqa_hallucination`
  on easy-VQA scenes.
"""
