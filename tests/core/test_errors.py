"""What an interrupted command says: the note of the command it stopped, even in the instant after it finished."""

from __future__ import annotations

import pytest

from camelid.core.errors import forget_notes, interrupt_note, interrupted_line


def test_an_interruption_inside_a_command_says_its_note():
    with pytest.raises(KeyboardInterrupt):
        with interrupt_note(lambda: "kept 3 instructions in out.jsonl"):
            raise KeyboardInterrupt
    assert interrupted_line() == "camelid: interrupted; kept 3 instructions in out.jsonl"


def test_a_signal_just_after_a_command_finished_still_says_what_it_kept():
    kept = [2]
    with interrupt_note(lambda: f"kept {kept[0]} instructions in out.jsonl", command=True):
        kept[0] = 5
    # the command returned; Ctrl-C lands while the CLI unwinds
    assert interrupted_line() == "camelid: interrupted; kept 5 instructions in out.jsonl"


def test_a_library_call_s_note_ends_with_the_call():
    # `camelid run`: the generate stage's note says nothing about a later stage's interruption
    with interrupt_note(lambda: "kept 4 instructions in generate/data.jsonl"):
        pass
    assert interrupted_line().startswith("camelid: interrupted; nothing was half-written")


def test_a_new_command_forgets_the_notes_of_the_last_one():
    with interrupt_note(lambda: "kept 1 instructions in old.jsonl", command=True):
        pass
    forget_notes()
    assert interrupted_line().startswith("camelid: interrupted; nothing was half-written")


def test_a_note_that_fails_never_masks_the_interruption():
    def broken() -> str:
        raise RuntimeError("state gone")

    with pytest.raises(KeyboardInterrupt):
        with interrupt_note(broken):
            raise KeyboardInterrupt
    assert interrupted_line().startswith("camelid: interrupted; nothing was half-written")
