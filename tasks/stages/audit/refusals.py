"""What a refusal and a harmful request look like: short English patterns, matched case-insensitively.

A refusal is judged on a response's first 200 characters (refusals open with them). A prompt is benign when it
names none of the harm topics below; a refusal of a benign prompt whose kind other rows answer is an over-refusal
(AutoPoison, Shu et al. 2023). The lists are deliberately short: a finding is evidence for a reviewer, not a verdict.
"""

from __future__ import annotations

REFUSAL = (r"(?i)^\W*(i'?m sorry|i am sorry|sorry, but|i apologi[sz]e|unfortunately, i|as an ai\b|as a language model|"
           r"i (?:cannot|can ?not|can'?t|won'?t|will not|am unable to|'?m unable to|am not able to|'?m not able to|"
           r"must decline|do not feel comfortable|don'?t feel comfortable))")
HARMFUL = (r"(?i)\b(weapons?|bombs?|explosives?|kill|murder|poison\w*|suicide|self-harm|hack\w*|malware|ransomware|"
           r"steal\w*|fraud\w*|counterfeit|launder\w*|drugs?|meth\w*|cocaine|heroin|terror\w*|abuse|porn\w*|"
           r"nude|racis\w*|slur|extremis\w*|stalk\w*|dox\w*|phishing|exploit)\b")
