"""The defaults every student generation starts from, in one place and free of torch, so a config can name them.

`programs.student_lm.generate`, `finetune.sample.sample_candidates`, `finetune.feedback.FeedbackConfig` and
`programs.config.PipelineConfig` refer to these. Stored samples' producer names compare against the values of the
first samples, not these (`programs.legacy_ids.SAMPLING_AT_FIRST`), so changing a default here never renames them.
"""

MAX_NEW_TOKENS = 64  # a student answer's length budget, in new tokens
BATCH_SIZE = 8  # prompts per `model.generate` call
SEED = 0
SAMPLE_K = 6  # candidates per input for the critic's feedback (the paper's k)
SAMPLE_METHOD = "nucleus"  # nucleus | diverse_beam | beam | greedy (finetune.sample.METHODS)
SAMPLE_TOP_P = 0.9
SAMPLE_TEMPERATURE = 1.0
