"""GRPO's reward functions, called as TRL calls them (by keyword: prompts, completions, the row's columns)."""

from workshop_lib import rewards


def _ask(text):
    return [{"role": "user", "content": text}]


def _say(text):
    return [{"role": "assistant", "content": text}]


def test_each_reward_scores_what_its_docstring_says():
    prompts = [_ask("In the list valley, horse, cherry, which one is a animal?")] * 4
    prompts[3] = [
        *_ask("Find the fruit in this list: horse, peach"),
        *_say("The animal is horse."),
        *_ask("And the fruit?"),
    ]
    answers = ["The animal is horse.", "The animal is valley.", "The animal is otter.", "The fruit is peach."]
    refs = ["The animal is horse.", "The animal is horse.", "The animal is horse.", "The fruit is peach."]
    completions = [_say(a) for a in answers]
    kw = {"prompts": prompts, "completions": completions, "answer": refs}
    assert rewards.correct(**kw) == [1.0, 0.0, 0.0, 1.0]
    assert rewards.well_formed(**kw) == [0.2] * 4
    # a word of the user's list (an earlier user turn counts: a follow-up question), right or wrong
    assert rewards.from_the_list(**kw) == [0.5, 0.5, 0.0, 0.5]
    # an earlier *answer* is not the user's list
    echo = [[*_ask("How many words: a, b"), *_say("The animal is otter."), *_ask("And the animal?")]]
    assert rewards.from_the_list(prompts=echo, completions=[_say("The animal is otter.")]) == [0.0]
    assert rewards.short(completions=[_say("one two three four five six seven eight nine ten")]) == [-0.2]
