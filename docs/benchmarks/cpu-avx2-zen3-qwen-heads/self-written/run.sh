#!/usr/bin/env bash
# Does the kind of training text matter? (issue 22; 2-core AMD EPYC Zen 3, AVX2 only.) The head
# trained by ../train.sh (docstring prompts only) is trained one more epoch (lr 3e-4, float32) on
# either (a) the target's answers to 240 requests it wrote itself (write_requests.py: the
# experiment's first version of `specdecode heads train --self-written`, whose cleaning then cut a
# request at its first blank line unless the first paragraph was over 60 characters) plus as many
# tokens of the old corpus, or (b) the control: the same number of tokens of the old corpus alone.
# Each head's teacher-forced agreement on the benchmark prompts' answers: scripts/head_agreement.py.
# The paths in finetune.py are this machine's head directory; expect about 40 minutes.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
D=docs/benchmarks/cpu-avx2-zen3-qwen-heads/self-written
mkdir -p /tmp/s6
.venv/bin/python $D/write_requests.py 240 /tmp/s6/chat_prompts.jsonl
.venv/bin/python $D/finetune.py chat /tmp/s6/head_chat | tee $D/finetune_chat.log
.venv/bin/python scripts/head_agreement.py qwen2.5-coder-1.5b --head /tmp/s6/head_chat --sizes "" > $D/agreement_chat.json
NT=$(grep -o "training sequences [0-9]* tokens [0-9]*" $D/finetune_chat.log | awk '{print $5}')
.venv/bin/python $D/finetune.py old /tmp/s6/head_old "$NT" | tee $D/finetune_control.log
.venv/bin/python scripts/head_agreement.py qwen2.5-coder-1.5b --head /tmp/s6/head_old --sizes "" > $D/agreement_control.json
