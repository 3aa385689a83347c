"""Reference: FastChat's MT-bench judging, the parts `--prompts mt-bench` must reproduce byte for byte.

Copied from lm-sys/FastChat @ 0e6d3e4beaab66f4d3f93db72541a4abab8af28d (Apache-2.0):
- fastchat/llm_judge/common.py: the score regexes (FastChat writes them as non-raw strings; escaped here: the same
  patterns without Python's invalid-escape warning), NEED_REF_CATS, load_judge_prompts, Judge, and the bodies of
  run_judge_single / run_judge_pair. Changed only where they call a judge model: the OpenAI branch is kept (the
  published MT-bench numbers come from GPT-4) and its API call is replaced by the `judgment` argument, the judge's
  reply; the functions also return the messages that call would have sent.
- fastchat/conversation.py: the `chatgpt` template (the one get_conversation_template gives for gpt-4) reduced to the
  methods used here, with to_openai_api_messages verbatim.
- fastchat/llm_judge/show_result.py: display_result_pairwise, returning its table instead of printing it (args
  become parameters).
- fastchat/llm_judge/gen_judgment.py: make_judge_single / make_judge_pairwise, and how main() picks a judge: a
  question whose category is in NEED_REF_CATS gets the "math" judge with a reference answer, a second turn the
  "-mt" judge.
"""

import ast
import dataclasses
import json
import re

NEED_REF_CATS = ["math", "reasoning", "coding", "arena-hard-200"]

two_score_pattern = re.compile("\\[\\[(\\d+\\.?\\d*),\\s?(\\d+\\.?\\d*)\\]\\]")
two_score_pattern_backup = re.compile("\\[(\\d+\\.?\\d*),\\s?(\\d+\\.?\\d*)\\]")
one_score_pattern = re.compile("\\[\\[(\\d+\\.?\\d*)\\]\\]")
one_score_pattern_backup = re.compile("\\[(\\d+\\.?\\d*)\\]")
TIE_DELTA = 0.1


@dataclasses.dataclass
class Judge:
    model_name: str
    prompt_template: dict
    ref_based: bool = False
    multi_turn: bool = False


class Conversation:
    """conversation.py's Conversation for the `chatgpt` template: system_message "You are a helpful assistant.",
    roles ("user", "assistant")."""

    def __init__(self):
        self.system_message = "You are a helpful assistant."
        self.roles = ("user", "assistant")
        self.messages = []
        self.offset = 0

    def set_system_message(self, system_message: str):
        """Set the system message."""
        self.system_message = system_message

    def append_message(self, role: str, message: str):
        """Append a new message."""
        self.messages.append([role, message])

    def to_openai_api_messages(self):
        """Convert the conversation to OpenAI chat completion format."""
        if self.system_message == "":
            ret = []
        else:
            ret = [{"role": "system", "content": self.system_message}]

        for i, (_, msg) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0:
                ret.append({"role": "user", "content": msg})
            else:
                if msg is not None:
                    ret.append({"role": "assistant", "content": msg})
        return ret


def get_conversation_template(model):
    return Conversation()


def load_judge_prompts(prompt_file: str):
    prompts = {}
    with open(prompt_file) as fin:
        for line in fin:
            line = json.loads(line)
            prompts[line["name"]] = line
    return prompts


def make_judge_pairwise(judge_model, judge_prompts):
    judges = {}
    judges["default"] = Judge(judge_model, judge_prompts["pair-v2"])
    judges["math"] = Judge(judge_model, judge_prompts["pair-math-v1"], ref_based=True)
    judges["default-mt"] = Judge(judge_model, judge_prompts["pair-v2-multi-turn"], multi_turn=True)
    judges["math-mt"] = Judge(judge_model, judge_prompts["pair-math-v1-multi-turn"], ref_based=True, multi_turn=True)
    return judges


def make_judge_single(judge_model, judge_prompts):
    judges = {}
    judges["default"] = Judge(judge_model, judge_prompts["single-v1"])
    judges["math"] = Judge(judge_model, judge_prompts["single-math-v1"], ref_based=True)
    judges["default-mt"] = Judge(judge_model, judge_prompts["single-v1-multi-turn"], multi_turn=True)
    judges["math-mt"] = Judge(judge_model, judge_prompts["single-math-v1-multi-turn"], ref_based=True,
                              multi_turn=True)
    return judges


def pick_judge(judges: dict, question: dict, multi_turn: bool) -> Judge:
    """gen_judgment.py main(): questions in NEED_REF_CATS go to the math judges, second turns to the -mt ones."""
    kind = "math" if question["category"] in NEED_REF_CATS else "default"
    return judges[kind + ("-mt" if multi_turn else "")]


def run_judge_single(question, answer, judge, ref_answer, multi_turn=False, judgment=""):
    kwargs = {}
    model = judge.model_name
    if ref_answer is not None:
        kwargs["ref_answer_1"] = ref_answer["choices"][0]["turns"][0]
        if multi_turn:
            kwargs["ref_answer_2"] = ref_answer["choices"][0]["turns"][1]

    if multi_turn:
        user_prompt = judge.prompt_template["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_1=answer["choices"][0]["turns"][0],
            answer_2=answer["choices"][0]["turns"][1],
            **kwargs,
        )
    else:
        user_prompt = judge.prompt_template["prompt_template"].format(
            question=question["turns"][0],
            answer=answer["choices"][0]["turns"][0],
            **kwargs,
        )

    rating = -1

    system_prompt = judge.prompt_template["system_prompt"]
    conv = get_conversation_template(model)
    conv.set_system_message(system_prompt)
    conv.append_message(conv.roles[0], user_prompt)
    conv.append_message(conv.roles[1], None)

    messages = conv.to_openai_api_messages()  # what chat_completion_openai(model, conv, ...) sends

    if judge.prompt_template["output_format"] == "[[rating]]":
        match = re.search(one_score_pattern, judgment)
        if not match:
            match = re.search(one_score_pattern_backup, judgment)

        if match:
            rating = ast.literal_eval(match.groups()[0])
        else:
            rating = -1
    else:
        raise ValueError(f"invalid output format: {judge.prompt_template['output_format']}")

    return rating, user_prompt, judgment, messages


def run_judge_pair(question, answer_a, answer_b, judge, ref_answer, multi_turn=False, judgment=""):
    kwargs = {}
    model = judge.model_name
    if ref_answer is not None:
        kwargs["ref_answer_1"] = ref_answer["choices"][0]["turns"][0]
        if multi_turn:
            kwargs["ref_answer_2"] = ref_answer["choices"][0]["turns"][1]

    if multi_turn:
        system_prompt = judge.prompt_template["system_prompt"]
        user_prompt = judge.prompt_template["prompt_template"].format(
            question_1=question["turns"][0],
            question_2=question["turns"][1],
            answer_a_1=answer_a["choices"][0]["turns"][0],
            answer_b_1=answer_b["choices"][0]["turns"][0],
            answer_a_2=answer_a["choices"][0]["turns"][1],
            answer_b_2=answer_b["choices"][0]["turns"][1],
            **kwargs,
        )
    else:
        system_prompt = judge.prompt_template["system_prompt"]
        user_prompt = judge.prompt_template["prompt_template"].format(
            question=question["turns"][0],
            answer_a=answer_a["choices"][0]["turns"][0],
            answer_b=answer_b["choices"][0]["turns"][0],
            **kwargs,
        )

    winner = "error"

    conv = get_conversation_template(model)
    conv.append_message(conv.roles[0], user_prompt)
    conv.append_message(conv.roles[1], None)

    conv.set_system_message(system_prompt)  # the OpenAI branch
    messages = conv.to_openai_api_messages()  # what chat_completion_openai(model, conv, ...) sends

    if judge.prompt_template["output_format"] == "[[A]]":
        if "[[A]]" in judgment:
            winner = "A"
        elif "[[B]]" in judgment:
            winner = "B"
        elif "[[C]]" in judgment:
            winner = "tie"
        else:
            winner = "error"
    elif judge.prompt_template["output_format"] == "[[rating_a,rating_b]]":
        match = re.search(two_score_pattern, judgment)
        if not match:
            match = re.search(two_score_pattern_backup, judgment)
        if match:
            scores = [ast.literal_eval(s.strip()) for s in match.groups()]
            if abs(scores[0] - scores[1]) <= TIE_DELTA:
                winner = "tie"
            elif scores[0] > scores[1]:
                winner = "A"
            else:
                winner = "B"
        else:
            winner = "error"
    else:
        raise ValueError(f"invalid output format: {judge.prompt_template['output_format']}")

    return winner, user_prompt, judgment, messages


def display_result_pairwise(input_file, baseline_model=None, model_list=None):
    import pandas as pd

    df_all = pd.read_json(input_file, lines=True)
    df_all = df_all[(df_all["g1_winner"] != "error") & (df_all["g2_winner"] != "error")]

    list_res = []
    # traverse df row by row
    for index, row in df_all.iterrows():
        if model_list is not None and row["model_1"] not in model_list:
            continue
        if baseline_model is not None:
            if baseline_model not in [row["model_1"], row["model_2"]]:
                continue
        if row["g1_winner"] == "tie" or row["g1_winner"] != row["g2_winner"]:
            list_res.append({"model": row["model_1"], "win": 0, "loss": 0, "tie": 1})
            list_res.append({"model": row["model_2"], "win": 0, "loss": 0, "tie": 1})
        else:
            if row["g1_winner"] == "model_1":
                winner = row["model_1"]
                loser = row["model_2"]
            else:
                winner = row["model_2"]
                loser = row["model_1"]
            list_res.append({"model": winner, "win": 1, "loss": 0, "tie": 0})
            list_res.append({"model": loser, "win": 0, "loss": 1, "tie": 0})

    df = pd.DataFrame(list_res)
    df = df.groupby(["model"]).sum()

    # remove baseline model
    if baseline_model is not None:
        df = df[df.index != baseline_model]
    # add win rate
    df["win_rate"] = df["win"] / (df["win"] + df["loss"] + df["tie"])
    df["loss_rate"] = df["loss"] / (df["win"] + df["loss"] + df["tie"])
    # each tie counts as 0.5 win + 0.5 loss
    df["win_rate_adjusted"] = (df["win"] + 0.5 * df["tie"]) / (df["win"] + df["loss"] + df["tie"])
    return df
