"""Numbered schema migrations, each recorded in `_migrations` once applied (the simonw/llm habit).

Append a new function to MIGRATIONS to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import duckdb


def m001_initial(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,        -- stable: hash of the command's effective config
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            status VARCHAR,                    -- running | finished | failed | interrupted
            command VARCHAR,
            profile VARCHAR,
            config JSON,
            code_version VARCHAR
        );
        CREATE TABLE lm_calls (
            call_id VARCHAR NOT NULL,          -- DSPy's callback call id (unique; append-only log, no index)
            run_id VARCHAR,
            stage VARCHAR,
            module_call_id VARCHAR,            -- innermost module call that made it
            cache_key VARCHAR,                 -- sha256 of model + request: the store's LM cache key
            model VARCHAR,
            messages JSON,
            kwargs JSON,                       -- sampling settings; secrets are removed before writing
            response JSON,                     -- list of output texts
            logprobs JSON,                     -- per output: [{token, logprob, top: {token: logprob}}]
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            latency_s DOUBLE,
            cost DOUBLE,
            cache_hit BOOLEAN,
            error VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE lm_cache (                -- DSPy's response cache, kept here (store/callback.py)
            cache_key VARCHAR PRIMARY KEY,
            record JSON,
            created_at TIMESTAMP
        );
        CREATE TABLE module_calls (
            call_id VARCHAR NOT NULL,          -- unique; append-only log, no index
            run_id VARCHAR,
            stage VARCHAR,
            parent_call_id VARCHAR,
            module VARCHAR,
            inputs JSON,
            outputs JSON,
            error VARCHAR,
            latency_s DOUBLE,
            created_at TIMESTAMP
        );
        CREATE TABLE inputs (
            input_id VARCHAR PRIMARY KEY,      -- hash of task + text
            task VARCHAR,
            text VARCHAR,
            split VARCHAR,                     -- train | dev | test | ood | other
            source VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE candidates (
            candidate_id VARCHAR PRIMARY KEY,  -- hash of input, role, producer, rank
            input_id VARCHAR,
            role VARCHAR,                      -- teacher | student
            producer VARCHAR,                  -- model spec or checkpoint id
            rank INTEGER,                      -- position in the producer's list (0-based)
            text VARCHAR,
            lm_call_id VARCHAR,                -- the LM call that wrote it (NULL for local student generation)
            run_id VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE judgments (
            judgment_id VARCHAR PRIMARY KEY,   -- hash of judge, input, first, second
            input_id VARCHAR,
            judge VARCHAR,                     -- model spec
            first_id VARCHAR,                  -- candidate shown as paraphrase 1
            second_id VARCHAR,                 -- candidate shown as paraphrase 2
            choice INTEGER,                    -- 1 | 2 | NULL when unparsable
            p_first DOUBLE,                    -- P(paraphrase 1 is better) in this order
            source VARCHAR,                    -- logprobs | parsed
            reason VARCHAR,
            purpose VARCHAR,                   -- eval | feedback | audit
            lm_call_id VARCHAR,
            run_id VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE datasets (
            dataset_id VARCHAR PRIMARY KEY,    -- hash of name + sql + row content
            name VARCHAR,
            sql VARCHAR,
            n_rows INTEGER,
            rows JSON,
            run_id VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE training_runs (
            training_id VARCHAR PRIMARY KEY,   -- hash of config + dataset
            run_id VARCHAR,
            objective VARCHAR,                 -- ft (imitation) | sd | brio | dpo | brio-dpo
            base_model VARCHAR,
            dataset_id VARCHAR,
            config JSON,
            status VARCHAR,
            metrics JSON,                      -- log history: loss per step
            started_at TIMESTAMP,
            finished_at TIMESTAMP
        );
        CREATE TABLE checkpoints (
            checkpoint_id VARCHAR PRIMARY KEY,
            training_id VARCHAR,
            path VARCHAR,
            step INTEGER,
            merged BOOLEAN,
            created_at TIMESTAMP
        );
        CREATE TABLE evaluations (
            evaluation_id VARCHAR PRIMARY KEY,
            run_id VARCHAR,
            checkpoint_id VARCHAR,
            student VARCHAR,
            reference VARCHAR,                 -- what the student is compared with (teacher spec)
            judge VARCHAR,
            split VARCHAR,
            n INTEGER,
            wtr_prob DOUBLE,                   -- mean debiased P(student >= reference): the paper's WTR
            wtr_prob_lo DOUBLE,
            wtr_prob_hi DOUBLE,
            wtr_decision DOUBLE,               -- share of items where the debiased P favours the student
            wtr_decision_lo DOUBLE,
            wtr_decision_hi DOUBLE,
            details JSON,
            created_at TIMESTAMP
        );
        """
    )


def m002_views(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE VIEW teacher_pairs AS
            SELECT i.input_id, i.text AS input, c.text AS output, c.producer AS teacher, c.rank, i.split
            FROM candidates c JOIN inputs i USING (input_id)
            WHERE c.role = 'teacher';
        CREATE VIEW judgment_orders AS
            SELECT a.input_id, a.judge, a.first_id AS a_id, a.second_id AS b_id,
                   a.p_first AS p_a_first, 1 - b.p_first AS p_a_second,
                   (a.p_first + (1 - b.p_first)) / 2 AS p_a,
                   (a.choice = 1) <> (b.choice = 2) AS position_flip
            FROM judgments a JOIN judgments b
              ON a.input_id = b.input_id AND a.judge = b.judge
             AND a.first_id = b.second_id AND a.second_id = b.first_id
            WHERE a.first_id < a.second_id;
        CREATE VIEW win_rates AS
            SELECT e.created_at, e.student, e.reference, e.judge, e.split, e.n,
                   e.wtr_prob, e.wtr_prob_lo, e.wtr_prob_hi, e.wtr_decision, e.wtr_decision_lo, e.wtr_decision_hi,
                   t.objective
            FROM evaluations e
            LEFT JOIN checkpoints k USING (checkpoint_id)
            LEFT JOIN training_runs t USING (training_id);
        CREATE VIEW cost_per_stage AS
            SELECT run_id, stage, model, count(*) AS calls,
                   count(*) FILTER (WHERE cache_hit) AS cache_hits,
                   count(*) FILTER (WHERE error IS NOT NULL) AS errors,
                   sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
                   round(sum(latency_s), 2) AS latency_s, sum(cost) AS cost
            FROM lm_calls GROUP BY ALL;
        """
    )


def m003_audits(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(
        """
        CREATE TABLE audits (                  -- the critic audited on labeled pairs (metrics/audit.py)
            audit_id VARCHAR PRIMARY KEY,      -- hash of judge, pairs file hash, pair ids
            run_id VARCHAR,
            judge VARCHAR,                     -- model spec
            source VARCHAR,                    -- the pairs file
            n INTEGER,                         -- pairs with a debiased P(better)
            agreement DOUBLE,                  -- share of pairs where the debiased P(better) > 0.5
            agreement_lo DOUBLE,
            agreement_hi DOUBLE,
            position_flip_rate DOUBLE,         -- share of pairs whose choice names the same position in both orders
            single_order_agreement DOUBLE,     -- agreement from the first order judged alone
            length_bias DOUBLE,                -- among decided disagreements, share that went to the longer text
            details JSON,                      -- per-pair rows, length shares, intervals, failures
            created_at TIMESTAMP
        );
        """
    )


def m004_feedback_views(con: duckdb.DuckDBPyConnection) -> None:
    """The paper's data selection as views: the feedback stage's default datasets are queries over these."""
    con.execute(
        """
        CREATE VIEW feedback_pairs AS          -- a judged student pair: the critic's positive and negative
            SELECT o.input_id, i.text AS input, i.split, o.judge, ca.producer,
                   CASE WHEN o.p_a >= 0.5 THEN ca.text ELSE cb.text END AS chosen,
                   CASE WHEN o.p_a >= 0.5 THEN cb.text ELSE ca.text END AS rejected,
                   abs(o.p_a - 0.5) * 2 AS confidence
            FROM judgment_orders o
            JOIN candidates ca ON ca.candidate_id = o.a_id
            JOIN candidates cb ON cb.candidate_id = o.b_id
            JOIN inputs i ON i.input_id = o.input_id
            WHERE ca.role = 'sample' AND cb.role = 'sample' AND o.p_a IS NOT NULL;
        CREATE VIEW sd_examples AS             -- self-distillation: the critic's positives as SFT targets
            SELECT input_id, input, split, judge, producer, chosen AS output FROM feedback_pairs;
        CREATE VIEW teacher_scores AS          -- each teacher candidate's mean debiased win probability
            SELECT c.input_id, i.text AS input, i.split, c.candidate_id, c.producer AS teacher, c.rank, c.text,
                   o.judge, avg(CASE WHEN o.a_id = c.candidate_id THEN o.p_a ELSE 1 - o.p_a END) AS score
            FROM candidates c
            JOIN judgment_orders o ON o.a_id = c.candidate_id OR o.b_id = c.candidate_id
            JOIN inputs i ON i.input_id = c.input_id
            WHERE c.role = 'teacher' AND o.p_a IS NOT NULL
            GROUP BY ALL;
        """
    )


def m005_usage_views(con: duckdb.DuckDBPyConnection) -> None:
    """Calls, tokens, latency and cost per stage and per run (`cost_per_stage` from m002 stays as it was)."""
    con.execute(
        """
        CREATE VIEW usage_per_stage AS         -- one row per run, stage and model
            SELECT run_id, stage, model,
                   count(*) AS calls,
                   count(*) FILTER (WHERE cache_hit) AS cache_hits,
                   count(*) FILTER (WHERE NOT coalesce(cache_hit, false)) AS model_calls,
                   count(*) FILTER (WHERE error IS NOT NULL) AS errors,
                   sum(prompt_tokens) AS prompt_tokens,
                   sum(completion_tokens) AS completion_tokens,
                   sum(coalesce(prompt_tokens, 0) + coalesce(completion_tokens, 0))
                       FILTER (WHERE prompt_tokens IS NOT NULL OR completion_tokens IS NOT NULL) AS total_tokens,
                   round(sum(latency_s), 3) AS latency_s,
                   round(avg(latency_s) FILTER (WHERE NOT coalesce(cache_hit, false)), 3) AS mean_latency_s,
                   sum(cost) AS cost,
                   min(created_at) AS first_call_at,
                   max(created_at) AS last_call_at
            FROM lm_calls
            GROUP BY run_id, stage, model;
        CREATE VIEW usage_per_run AS           -- the same, summed over a run's stages, with the run's status
            SELECT u.run_id, r.status, r.profile, r.started_at, r.finished_at,
                   sum(u.calls) AS calls, sum(u.cache_hits) AS cache_hits, sum(u.model_calls) AS model_calls,
                   sum(u.errors) AS errors, sum(u.prompt_tokens) AS prompt_tokens,
                   sum(u.completion_tokens) AS completion_tokens, sum(u.total_tokens) AS total_tokens,
                   round(sum(u.latency_s), 3) AS latency_s, sum(u.cost) AS cost
            FROM usage_per_stage u
            LEFT JOIN runs r USING (run_id)
            GROUP BY u.run_id, r.status, r.profile, r.started_at, r.finished_at;
        """
    )


def m006_optimization(con: duckdb.DuckDBPyConnection) -> None:
    """Every candidate program a DSPy optimizer scored against the critic (trial 0: the unoptimized program)."""
    con.execute(
        """
        CREATE TABLE optimization_trials (
            trial_id VARCHAR PRIMARY KEY,
            program_key VARCHAR,   -- hash of optimizer settings, teacher, critic and inputs: one optimization
            run_id VARCHAR,
            optimizer VARCHAR,     -- bootstrap | mipro | gepa
            trial INTEGER,
            score DOUBLE,          -- mean critic score on the validation inputs, in [0, 1]
            chosen BOOLEAN,        -- the program that went on to teach
            note VARCHAR,
            instructions VARCHAR,
            n_demos INTEGER,
            program JSON,          -- the program's saved state
            settings JSON,
            created_at TIMESTAMP
        );
        """
    )

def m007_critic_methods(con: duckdb.DuckDBPyConnection) -> None:
    """Judgments name their prompt (`method`); each pair's combined P(a >= b) is a `verdicts` row, computed by the one
    rule in `programs.critic.combine`, and the feedback views read it instead of restating that rule. A store from
    before keeps its judgments (method 'reason-first': the paper's prompt) and gets their verdicts by the rule those
    judgments were made under: the mean probability over both orders (method 'reason-first/mean')."""
    con.execute(
        """
        ALTER TABLE judgments ADD COLUMN method VARCHAR;   -- reason-first | choice-first | .../rubricN | pointwise
        ALTER TABLE judgments ADD COLUMN score DOUBLE;     -- pointwise: expected 1-5 score (second_id NULL)
        UPDATE judgments SET method = 'reason-first' WHERE method IS NULL;
        CREATE TABLE verdicts (
            verdict_id VARCHAR PRIMARY KEY,    -- hash of judge, method, a_id, b_id
            input_id VARCHAR,
            judge VARCHAR,                     -- model spec
            method VARCHAR,                    -- the critic settings (CriticSettings.method), e.g. choice-first/logodds
            a_id VARCHAR,
            b_id VARCHAR,
            p_a DOUBLE,                        -- P(a >= b) over both orders (and rubrics); 0.5 = a tie or abstention
            orders_agree BOOLEAN,              -- both orders favoured the same candidate (NULL: an order is missing)
            n_orders INTEGER,                  -- judgments that gave a probability
            purpose VARCHAR,                   -- eval | feedback | brio | audit | teacher-eval
            run_id VARCHAR,
            created_at TIMESTAMP
        );
        INSERT INTO verdicts
            SELECT left(sha256('["verdict", "' || a.judge || '", "reason-first/mean", "' || a.first_id || '", "'
                               || a.second_id || '"]'), 24), a.input_id, a.judge,   -- = metrics.judge.verdict_id
                   'reason-first/mean', a.first_id, a.second_id,
                   (a.p_first + (1 - b.p_first)) / 2,           -- the rule those judgments were made under
                   (a.p_first > 0.5) = (1 - b.p_first > 0.5), 2, a.purpose, a.run_id, a.created_at
            FROM judgments a JOIN judgments b
              ON a.input_id = b.input_id AND a.judge = b.judge
             AND a.first_id = b.second_id AND a.second_id = b.first_id
            WHERE a.first_id < a.second_id AND a.p_first IS NOT NULL AND b.p_first IS NOT NULL;
        CREATE OR REPLACE VIEW judgment_orders AS   -- one prompt's two orders side by side (position flips)
            SELECT a.input_id, a.judge, a.method, a.first_id AS a_id, a.second_id AS b_id,
                   a.p_first AS p_a_first, 1 - b.p_first AS p_a_second,
                   (a.p_first + (1 - b.p_first)) / 2 AS p_a,    -- the paper's mean; verdicts hold the critic's rule
                   (a.choice = 1) <> (b.choice = 2) AS position_flip
            FROM judgments a JOIN judgments b
              ON a.input_id = b.input_id AND a.judge = b.judge AND a.method = b.method
             AND a.first_id = b.second_id AND a.second_id = b.first_id
            WHERE a.first_id < a.second_id;
        CREATE OR REPLACE VIEW feedback_pairs AS   -- a judged student pair: the critic's positive and negative
            SELECT v.input_id, i.text AS input, i.split, v.judge, v.method, ca.producer,
                   CASE WHEN v.p_a >= 0.5 THEN ca.text ELSE cb.text END AS chosen,
                   CASE WHEN v.p_a >= 0.5 THEN cb.text ELSE ca.text END AS rejected,
                   abs(v.p_a - 0.5) * 2 AS confidence, v.orders_agree
            FROM verdicts v
            JOIN candidates ca ON ca.candidate_id = v.a_id
            JOIN candidates cb ON cb.candidate_id = v.b_id
            JOIN inputs i ON i.input_id = v.input_id
            WHERE ca.role = 'sample' AND cb.role = 'sample' AND v.p_a IS NOT NULL;
        CREATE OR REPLACE VIEW sd_examples AS      -- self-distillation: the critic's positives as SFT targets
            SELECT input_id, input, split, judge, method, producer, chosen AS output FROM feedback_pairs;
        CREATE OR REPLACE VIEW teacher_scores AS   -- each teacher candidate's mean win probability over its verdicts
            SELECT c.input_id, i.text AS input, i.split, c.candidate_id, c.producer AS teacher, c.rank, c.text,
                   v.judge, v.method, avg(CASE WHEN v.a_id = c.candidate_id THEN v.p_a ELSE 1 - v.p_a END) AS score
            FROM candidates c
            JOIN verdicts v ON v.a_id = c.candidate_id OR v.b_id = c.candidate_id
            JOIN inputs i ON i.input_id = c.input_id
            WHERE c.role = 'teacher' AND v.p_a IS NOT NULL
            GROUP BY ALL;
        """
    )


def m008_dataset_prompts(con: duckdb.DuckDBPyConnection) -> None:
    """Each dataset row's prompt as the student was trained on it (the task's chat messages), so `python -m store
    export` writes exactly what training read without knowing the task. Not part of `dataset_id`: ids stay."""
    con.execute("ALTER TABLE datasets ADD COLUMN prompts JSON")


def m009_teacher_traces(con: duckdb.DuckDBPyConnection) -> None:
    """A teacher program's run, step by step: which predictor read which inputs and wrote which outputs, so a student
    of several predictors trains on every step, as DSPy's own fine-tuning does. NULL for a teacher of one call."""
    con.execute(
        """
        ALTER TABLE candidates ADD COLUMN trace JSON;
        CREATE VIEW teacher_steps AS               -- each predictor call of the teacher program's run that wrote a candidate
            SELECT c.input_id, i.split, c.candidate_id, c.producer AS teacher, c.rank, s.step,
                   c.trace -> s.step ->> 'predictor' AS predictor,
                   (c.trace -> s.step -> 'inputs')::VARCHAR AS input,
                   (c.trace -> s.step -> 'outputs')::VARCHAR AS output
            FROM candidates c JOIN inputs i USING (input_id), range(json_array_length(c.trace)::BIGINT) s(step)
            WHERE c.role = 'teacher' AND c.trace IS NOT NULL;
        """
    )


def m010_dataset_completions(con: duckdb.DuckDBPyConnection) -> None:
    """Each dataset row's answers as the student was trained on them (a task of several output fields renders them
    `Label: value`; a program's step its predictor's fields), beside `prompts`: the export writes what training read."""
    con.execute("ALTER TABLE datasets ADD COLUMN completions JSON")


def m011_guards_and_ratings(con: duckdb.DuckDBPyConnection) -> None:
    """What guards the critic's blind spots and what lets any rater check it: each candidate's meaning similarity to
    its input (the meaning guard, critic-curated imitation), the critic's length preference fitted on its own verdicts
    (length-controlled verdicts), and the key of each blind-pairs file (which candidate a rater saw as A and as B)."""
    con.execute(
        """
        CREATE TABLE similarities (            -- a candidate's meaning similarity to its input (metrics/similarity.py)
            candidate_id VARCHAR,
            embedder VARCHAR,                  -- the sentence-embedding model
            meaning DOUBLE,                    -- cosine of the input's and the candidate's embeddings
            created_at TIMESTAMP,
            PRIMARY KEY (candidate_id, embedder)
        );
        CREATE TABLE length_fits (             -- the critic's preference for the longer output (metrics/length_control.py)
            fit_id VARCHAR PRIMARY KEY,        -- hash of judge, method and the verdicts fitted
            judge VARCHAR,
            method VARCHAR,                    -- the critic settings of the verdicts fitted
            purpose VARCHAR,                   -- feedback | eval
            n INTEGER,                         -- verdicts fitted
            slope DOUBLE,                      -- log-odds per unit of the length feature tanh(diff / scale)
            scale DOUBLE,                      -- the standard deviation of the word-count differences fitted
            run_id VARCHAR,
            created_at TIMESTAMP
        );
        CREATE TABLE blind_pairs (             -- the key of a blind-pairs file (finetune/rate.py)
            pair_id VARCHAR PRIMARY KEY,       -- what the file names; random
            batch VARCHAR,                     -- one export
            input_id VARCHAR,
            a_id VARCHAR,                      -- the candidate shown as A
            b_id VARCHAR,                      -- the candidate shown as B
            x VARCHAR,                         -- the two systems compared (producers; 'teacher' for the reference)
            y VARCHAR,
            repeat_of VARCHAR,                 -- a pair shown again swapped: the pair it repeats (rater consistency)
            split VARCHAR,
            created_at TIMESTAMP
        );
        """
    )


def m012_student_failures(con: duckdb.DuckDBPyConnection) -> None:
    """Where a student's program failed on an input (an answer its adapter could not parse, a check the user's program
    raised): the evaluation counts each as a loss, so a failure cannot raise a win rate by being left out."""
    con.execute(
        """
        CREATE TABLE student_failures (        -- finetune/evaluate.py: student_outputs
            input_id VARCHAR,
            producer VARCHAR,                  -- the student (its checkpoint id or spec)
            error VARCHAR,                     -- the exception, one line: type: message
            lm_call_id VARCHAR,                -- the student's last LM call on this input, when it made one
            run_id VARCHAR,
            created_at TIMESTAMP,
            PRIMARY KEY (input_id, producer)
        );
        """
    )


MIGRATIONS: list[Callable[[duckdb.DuckDBPyConnection], None]] = [m001_initial, m002_views, m003_audits,
                                                                   m004_feedback_views, m005_usage_views,
                                                                   m006_optimization, m007_critic_methods,
                                                                   m008_dataset_prompts, m009_teacher_traces,
                                                                   m010_dataset_completions, m011_guards_and_ratings,
                                                                   m012_student_failures]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations this file has not seen yet, each in its own transaction."""
    con.execute("CREATE TABLE IF NOT EXISTS _migrations (version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP)")
    done = {row[0] for row in con.execute("SELECT version FROM _migrations").fetchall()}
    applied = []
    for version, fn in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute("INSERT INTO _migrations VALUES (?, ?, now())", [version, fn.__name__])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(fn.__name__)
    return applied
