"""Text windows start as a text given to the model would: with the start-of-text token on every window."""
import pytest
import torch

from workbench.tasks.text import prose_text, start_ids, token_windows, window_start


def _word_tokenizer(add_bos: bool):
    """A real fast tokenizer (tokenizers WordLevel) over the prose's words, adding <bos> when asked."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from workbench.tasks.text import prose_text

    words = sorted(set(prose_text("all").split()))
    vocab = {"<unk>": 0, "<bos>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", unk_token="<unk>")


def test_every_window_starts_with_bos_when_the_tokenizer_adds_one():
    tok = _word_tokenizer(add_bos=True)
    assert start_ids(tok) == [1]
    w = token_windows(tok, 16, 5)
    assert w.shape == (5, 16) and (w[:, 0] == 1).all() and not (w[:, 1:] == 1).any()
    body = tok(" ".join(prose_text("all").split()[:200]),
               add_special_tokens=False).input_ids
    # consecutive, disjoint 15-token pieces of the text follow the BOS
    assert w[:, 1:].reshape(-1).tolist() == body[:75]
    assert "<bos>" in window_start(tok)["rule"]


def test_no_prefix_when_the_tokenizer_adds_none():
    tok = _word_tokenizer(add_bos=False)
    assert start_ids(tok) == [] and "no start-of-text token" in window_start(tok)["rule"]
    w = token_windows(tok, 16, 3)
    assert not (w == 1).any()
    assert torch.equal(token_windows(_word_tokenizer(True), 16, 3, prefix_ids=[]), w)  # [] switches it off


def test_prefix_filling_the_window_is_refused():
    with pytest.raises(ValueError, match="no room"):
        token_windows(_word_tokenizer(True), 1, 2)


@pytest.mark.slow
def test_gemma3_windows_all_start_with_bos(gemma3):
    w = token_windows(gemma3.tokenizer, 64, 4)
    assert (w[:, 0] == gemma3.tokenizer.bos_token_id).all() and not (w[:, 1:] == gemma3.tokenizer.bos_token_id).any()
