"""Reference verdicts from the Python `math-verify` library for grpo's math_accuracy.

    python math_verify_oracle.py generate OUT.jsonl

writes one JSON object per line: reference, completion, form (what the pair exercises), verdict
(math-verify's: verify(parse(gold), parse(completion))) and unsupported (null, or why grpo does not
claim to match math-verify on that form). The gold is parsed as math-verify's README suggests for
LaTeX golds: a reference without \\boxed is wrapped as \\boxed{reference}, so that the whole
reference is the answer (a bare "(1,2)" or "\\$5" otherwise parses to nothing).
The gtest MathVerifyOracle (tests/rewards/test_math_answer.cpp) reads the file.
"""
import json
import re
import sys

from math_verify import parse, verify

# (reference, answer as the model writes it, form). Matching and near-miss pairs of every form.
CORE = [
    # integers, signs
    ("42", "42", "integer"), ("42", "43", "integer"), ("-3", "-3", "negative"), ("-3", "3", "negative"),
    ("3", "-3", "negative"), ("0", "0", "integer"), ("0", "-0", "negative"), ("+7", "7", "negative"),
    ("1000000", "1000000", "integer"), ("1000000", "1000001", "integer"), ("-12", "- 12", "negative"),
    # decimals
    ("0.5", "0.5", "decimal"), ("0.5", "0.51", "decimal"), ("3", "3.0", "decimal"), ("3.0", "3", "decimal"),
    ("0.5", ".5", "decimal"), ("2.50", "2.5", "decimal"), ("-0.25", "-0.25", "decimal"),
    ("-0.25", "0.25", "decimal"), ("1", "1.0000001", "decimal"), ("1", "1.000001", "decimal"),
    ("100", "100.0001", "decimal"), ("3.14159", "3.14159", "decimal"), ("3.14159", "3.1416", "decimal"),
    # thousands separators
    ("1,000", "1000", "thousands"), ("1000", "1,000", "thousands"), ("1,234,567", "1234567", "thousands"),
    ("1234567", "1,234,567", "thousands"), ("1,000", "1,001", "thousands"), ("12,345.5", "12345.5", "thousands"),
    ("1,000", "100", "thousands"),
    # fractions
    ("1/2", "1/2", "fraction"), ("1/2", "2/1", "fraction"), ("1/2", "0.5", "fraction"),
    ("\\frac{2}{4}", "1/2", "frac"), ("1/2", "\\frac{2}{4}", "frac"), ("\\frac{3}{4}", "\\dfrac{3}{4}", "frac"),
    ("\\frac{3}{4}", "\\tfrac{3}{4}", "frac"), ("\\frac{3}{4}", "0.75", "frac"), ("0.75", "\\frac{3}{4}", "frac"),
    ("\\frac{3}{4}", "\\frac{4}{3}", "frac"), ("\\frac{1}{2}", "\\frac12", "frac"), ("-\\frac{1}{2}", "-0.5", "frac"),
    ("-\\frac{1}{2}", "\\frac{1}{2}", "frac"), ("\\frac{-1}{2}", "-\\frac{1}{2}", "frac"), ("1/3", "0.333333", "frac"),
    ("1/3", "0.33", "frac"), ("1/3", "0.3333", "frac"), ("2/3", "0.666667", "frac"), ("\\frac{10}{4}", "2.5", "frac"),
    ("\\frac{1}{3}", "\\frac{2}{6}", "frac"), ("7/8", "\\dfrac{7}{9}", "frac"),
    # mixed numbers (math-verify reads n\frac{a}{b} as n + a/b)
    ("2\\frac{1}{2}", "2.5", "mixed"), ("5/2", "2\\frac{1}{2}", "mixed"), ("2\\frac{1}{2}", "2\\frac{1}{2}", "mixed"),
    ("2\\frac{1}{2}", "\\frac{1}{2}", "mixed"), ("3\\frac{1}{4}", "3.25", "mixed"), ("3\\frac{1}{4}", "3.75", "mixed"),
    # percentages
    ("50\\%", "0.5", "percent"), ("50\\%", "50", "percent"), ("50\\%", "50\\%", "percent"), ("0.5", "50\\%", "percent"),
    ("50", "50\\%", "percent"), ("10\\%", "0.1", "percent"), ("10\\%", "10", "percent"), ("10\\%", "1", "percent"),
    ("10\\%", "0.01", "percent"), ("12.5\\%", "0.125", "percent"), ("12.5\\%", "12.5", "percent"),
    ("25\\%", "\\frac{1}{4}", "percent"), ("25\\%", "26\\%", "percent"),
    # LaTeX wrappers
    ("3", "\\text{3}", "wrapper"), ("3", "\\mathrm{3}", "wrapper"), ("5", "5\\text{ cm}", "unit"),
    ("5\\text{ m}", "5", "unit"), ("5", "5 \\mathrm{cm}", "unit"), ("5", "5\\,\\text{cm}", "unit"),
    ("5", "6\\text{ cm}", "unit"), ("12", "12 \\text{ apples}", "unit"), ("1000", "1\\!000", "wrapper"),
    ("\\$5", "5", "wrapper"), ("5", "\\$5", "wrapper"), ("7", "\\displaystyle 7", "wrapper"),
    ("\\frac{1}{2}", "\\left(\\frac{1}{2}\\right)", "wrapper"),
    # scientific notation
    ("1000", "1\\times 10^{3}", "scientific"), ("1500", "1.5\\times 10^{3}", "scientific"),
    ("1000", "10^3", "scientific"), ("1000", "10^{4}", "scientific"), ("0.001", "10^{-3}", "scientific"),
    ("2.5\\times10^{-2}", "0.025", "scientific"), ("3\\cdot 10^{2}", "300", "scientific"),
    ("1000", "1e3", "scientific_e"), ("1e3", "1000", "scientific_e"),
    # tuples and intervals
    ("(1,2)", "(1,2)", "tuple"), ("(1,2)", "(2,1)", "tuple"), ("(1,2)", "(1, 2)", "tuple"),
    ("(1,2)", "\\left(1,2\\right)", "tuple"), ("(1,2,3)", "(1,2,3)", "tuple"), ("(1,2,3)", "(1,3,2)", "tuple"),
    ("(-1,\\frac{1}{2})", "(-1,0.5)", "tuple"), ("(3,-4)", "(3,4)", "tuple"), ("(0.5, 2)", "(\\frac12, 2)", "tuple"),
    ("[1,2)", "[1,2)", "interval"), ("[1,2)", "[1,2]", "interval"), ("(1,2]", "(1,2]", "interval"),
    ("(1,2]", "[1,2)", "interval"), ("[1,2]", "[1,2]", "interval"), ("[1,2]", "(1,2)", "interval"),
    ("[-3, 5)", "[-3,5)", "interval"), ("[0, 1]", "[0, 0.5]", "interval"),
    ("1,2", "1,2", "list"), ("1,2", "2,1", "list"), ("(1,2)", "1,2", "list"), ("1, 3, 5", "5, 3, 1", "list"),
    ("1, 3, 5", "1, 3", "list"),
    # text answers
    ("\\text{yes}", "\\text{yes}", "text"), ("\\text{yes}", "\\text{no}", "text"),
]

# Completion templates: (name, format). {a} is the answer as written.
TEMPLATES = [
    ("boxed_sentence", "Adding the two parts gives the total, so the answer is \\boxed{{{a}}}."),
    ("think_boxed", "<think>First 12 + 30 = 42, then check 7 * 6.</think> The final answer is $\\boxed{{{a}}}$"),
    ("answer_tags", "<think>Let me compute 3 + 4 = 7 and go on.</think> <answer> {a} </answer>"),
    ("answer_tags_boxed", "<think>Try 2 and 5 first.</think><answer>\\boxed{{{a}}}</answer>"),
    ("plain_trailing", "We try 2, then 9 works. The answer is {a}"),
]

EXTRA = [
    # (reference, completion, form, unsupported reason or None)
    ("42", "\\boxed{42 + \\frac{0}{1}}", "expression", "arithmetic expressions are not evaluated"),
    ("2", "\\boxed{1} and then \\boxed{2}", "multiple_boxed",
     "math-verify joins several \\boxed{} answers into a set; grpo takes the last"),
    ("3", "The box is \\fbox{3}", "fbox", "math-verify does not read \\fbox{}"),
    ("42", "<think>...</think><answer>42</answer>", "answer_tags_tight",
     "math-verify does not read <answer> tags; '42</answer>' yields nothing"),
    ("1000", "\\boxed{1\\,000}", "thin_space_thousands", "math-verify reads 1\\,000 as 1*000 = 0"),
    ("\\boxed{7}", "so \\boxed{\\dfrac{14}{2}}", "boxed_reference", None),
    ("\\boxed{7}", "so \\boxed{8}", "boxed_reference", None),
    ("17", "no answer here", "no_answer", None),
    ("17", "", "no_answer", None),
    ("5", "the answer is \\boxed{{5}}", "nested_braces", None),
    ("\\frac{1}{2}", "thus \\boxed{\\frac{1}{\\sqrt{4}}}", "nested_braces", "square roots are not evaluated"),
]

# A plain trailing answer is only realistic for answers without LaTeX.
def plain_ok(a: str) -> bool:
    return "\\" not in a and "(" not in a and "[" not in a and "," not in a


PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def unsupported_reason(ref: str, a: str, form: str, template: str):
    # math-verify has no notion of <answer> tags: it reads LaTeX only inside $...$ or \boxed{} and
    # otherwise takes plain numbers from the text, so an un-boxed LaTeX, tuple or signed answer in
    # tags is invisible to it. grpo reads the tag's content.
    if template == "answer_tags" and not PLAIN_NUMBER.fullmatch(a):
        return "math-verify does not read <answer> tags; it sees only plain numbers outside $...$"
    return None


def gold_of(reference: str):
    return parse(reference if "\\boxed" in reference else "\\boxed{" + reference + "}")


def generate(out_path: str) -> None:
    rows = []
    for ref, a, form in CORE:
        for name, fmt in TEMPLATES:
            if name == "plain_trailing" and not plain_ok(a):
                continue
            rows.append((ref, fmt.format(a=a), f"{form}/{name}", unsupported_reason(ref, a, form, name)))
    for ref, completion, form, reason in EXTRA:
        rows.append((ref, completion, form, reason))
    with open(out_path, "w") as f:
        for ref, completion, form, reason in rows:
            verdict = bool(verify(gold_of(ref), parse(completion)))
            f.write(json.dumps({"reference": ref, "completion": completion, "form": form,
                                "verdict": verdict, "unsupported": reason}) + "\n")
    print(f"wrote {len(rows)} pairs to {out_path}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "generate":
        sys.exit("usage: math_verify_oracle.py generate OUT.jsonl")
    generate(sys.argv[2])
