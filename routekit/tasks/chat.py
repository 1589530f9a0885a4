"""Chat-template rendering: the one place a prompt becomes the text a model reads.

Every path that feeds prompts to a model (evaluation, SFT, RL rollouts, the routers'
features, the prompt router, the few-shot router, ``AdaptiveModel``, the proxy processor and
``routekit compare``) renders through :func:`render_prompt`, so a prompt reads the same
everywhere. The rule: the rendered string, tokenized with the tokenizer's default
``add_special_tokens=True``, gives exactly the ids the chat template gives. A template that
starts with the BOS string, on a tokenizer that adds BOS itself (Llama-2, Mistral), has that
leading BOS string removed so it is not doubled.

Chat rendering is off unless a task says ``chat=True`` (the lm-evaluation-harness
convention); ``--chat``/``--no-chat`` and ``chat:`` in recipes and suites override it.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from ..errors import ConfigError
from .base import Example, Task


def _check_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"chat rendering was asked for, but the {type(tokenizer).__name__} has no chat "
            "template; pass chat=False (--no-chat) or set tokenizer.chat_template."
        )


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer(text)`` puts the BOS token in front by itself."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(with_special) and with_special[0] == bos and (not plain or plain[0] != bos)


def _strip_bos(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        return text[len(bos) :]
    return text


def _apply(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation: bool
) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    return _strip_bos(tokenizer, str(text))


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, chat: bool) -> str:
    """``prompt`` as the model reads it: unchanged, or one user turn through the tokenizer's
    chat template with the assistant turn opened (``add_generation_prompt=True``)."""
    if not chat:
        return prompt
    _check_template(tokenizer)
    return _apply(tokenizer, [{"role": "user", "content": prompt}], True)


def render_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], chat: bool) -> list[str]:
    """:func:`render_prompt` of each prompt."""
    return [render_prompt(tokenizer, p, chat) for p in prompts] if chat else list(prompts)


def render_example(tokenizer: PreTrainedTokenizerBase, prompt: str, answer: str) -> str:
    """The whole chat text of ``prompt`` answered by ``answer``: the user turn and the
    assistant turn, closed as the template closes it (for SmolLM2 ``answer<|im_end|>\\n``).
    It starts with :func:`render_prompt` ``(tokenizer, prompt, True)``."""
    _check_template(tokenizer)
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    full = _apply(tokenizer, messages, False)
    rendered = render_prompt(tokenizer, prompt, True)
    if not full.startswith(rendered):
        raise ConfigError(
            f"the {type(tokenizer).__name__}'s chat template renders an answered prompt that "
            "does not start with the rendered prompt, so the assistant turn cannot be cut off; "
            "use chat=False for this tokenizer."
        )
    return full


def check_rendering(tokenizer: PreTrainedTokenizerBase, prompt: str) -> None:
    """Refuse a tokenizer on which the rendered string of ``prompt`` does not tokenize to the
    ids the chat template itself gives (``apply_chat_template(..., tokenize=True)``): a
    tokenizer that treats text after a special token differently, so no string can carry the
    template's ids through ``tokenizer(text)``."""
    want = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=True, add_generation_prompt=True
    )
    want = list(want["input_ids"] if hasattr(want, "keys") else want)
    got = list(tokenizer(render_prompt(tokenizer, prompt, True))["input_ids"])
    if got != want:
        at = next(
            (i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))
        )
        raise ConfigError(
            f"the {type(tokenizer).__name__}'s rendered chat prompt tokenizes differently from its "
            f"chat template's own ids (first difference at token {at}: "
            f"{tokenizer.convert_ids_to_tokens(got[at : at + 2])} vs "
            f"{tokenizer.convert_ids_to_tokens(want[at : at + 2])}); routekit renders prompts as "
            "text, so use chat=False with this tokenizer."
        )


def render_chat_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> Example:
    """``example`` through the chat template: the rendered prompt, and as ``target`` the
    assistant turn that follows it (the answer is the example's target, else its reference,
    stripped). The raw prompt is kept in ``meta["raw_prompt"]``."""
    answer = (example.target if example.target is not None else example.reference).strip()
    prompt = render_prompt(tokenizer, example.prompt, True)
    full = render_example(tokenizer, example.prompt, answer)
    meta = {**example.meta, "raw_prompt": example.prompt}
    return Example(prompt, example.reference, meta, target=full[len(prompt) :])


def render_task(task: Task, tokenizer: PreTrainedTokenizerBase, chat: bool | None = None) -> Task:
    """``task`` as ``tokenizer``'s model reads it. With chat (``chat``, else ``task.chat``) a
    new Task of rendered examples (see :func:`render_chat_example`), marked rendered so a
    second call leaves it alone; without, ``task`` itself. The rendering rule is checked on
    the first prompt (:func:`check_rendering`)."""
    chat = task.chat if chat is None else chat
    if not chat or task.rendered:
        return task
    _check_template(tokenizer)
    first = next((task.examples(s)[0] for s in task.splits if task.examples(s)), None)
    if first is not None:
        check_rendering(tokenizer, first.prompt)
    splits = {s: [render_chat_example(tokenizer, e) for e in task.examples(s)] for s in task.splits}
    out = Task(task.name, splits, task.checker, family=task.family, world=task.world, chat=True)
    out.rendered = True
    return out
