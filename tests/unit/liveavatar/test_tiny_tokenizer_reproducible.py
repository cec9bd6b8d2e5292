"""The tiny umT5 tokenizer gives the same ids in every process (issue 9, point 5).

It used to be trained per process by the tokenizers Unigram trainer, whose tie-breaking differs from one
process to the next: the same prompt got other ids, so two identical tiny renders differed by up to 19 grey
levels. Each process here builds its own tokenizer with a fresh hash seed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = (
    "import json\n"
    "from live_avatar.core.engines.liveavatar.tiny_weights import build_tiny_tokenizer\n"
    "t = build_tiny_tokenizer(256)\n"
    "print(json.dumps([len(t), t('A person is talking to the camera, zebra!')['input_ids']]))\n"
)


def _ids(hash_seed: str) -> list:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh interpreters importing transformers
def test_same_ids_in_every_process():
    runs = [_ids(seed) for seed in ("1", "2")]
    assert runs[0] == runs[1]
    size, ids = runs[0]
    assert ids[-1] == 1 and 2 not in ids[:3]  # </s>-terminated; known words are not <unk>
    assert size > 40
