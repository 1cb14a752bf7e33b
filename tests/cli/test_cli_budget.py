"""The training budget: a budget given to ``eggroll-rl train`` (flags or config file) replaces the env's or the resumed
run's whole (the limits given apply, the others are off), and ``train`` stops on a time limit alone."""

from __future__ import annotations

import pytest

from eggroll_rl.agents.config import TrainConfig
from eggroll_rl.agents.trainer import train
from eggroll_rl.cli import _train_config, main

# HalfCheetah's GPU recipe has a time limit and a generation cap (540 s, 1000); --device cuda needs no GPU to parse.
CHEETAH = ["HalfCheetah", "--device", "cuda"]


def _budget(config: TrainConfig) -> tuple[int, int, float]:
    return config.generations, config.total_steps, config.time_limit_s


def _tiny_cartpole(**overrides) -> TrainConfig:
    values = dict(
        device="cpu",
        population=4,
        hidden_sizes=(4,),
        eval_every=0,
        eval_episodes=2,
        max_episode_steps=20,
        tensorboard=False,
        cpu_threads=1,
    )
    return TrainConfig.for_env("CartPole", **(values | overrides))


def test_time_limit_alone_has_no_generation_cap():
    default = _train_config(CHEETAH)
    assert _budget(default) == (1000, 0, 540.0)
    config = _train_config([*CHEETAH, "--time-limit-s", "480"])
    assert _budget(config) == (0, 0, 480.0)
    assert config.replace(generations=1000, time_limit_s=540.0) == default  # the env's other settings are kept


@pytest.mark.parametrize(
    "flags, budget",
    [
        (["--generations", "300"], (300, 0, 0.0)),
        (["--total-steps", "5000000"], (0, 5000000, 0.0)),
        (["--generations", "300", "--time-limit-s", "480"], (300, 0, 480.0)),
        (["--total-steps", "5000000", "--time-limit-s", "480"], (0, 5000000, 480.0)),
    ],
)
def test_the_limits_given_apply_and_the_others_are_off(flags, budget):
    assert _budget(_train_config([*CHEETAH, *flags])) == budget


def test_a_config_files_budget_counts_as_given(tmp_path):
    only_time = tmp_path / "time.yaml"
    only_time.write_text("time_limit_s: 60\n")
    assert _budget(_train_config([*CHEETAH, "--config", str(only_time)])) == (0, 0, 60.0)
    generations = tmp_path / "generations.yaml"
    generations.write_text("generations: 50\n")
    config = _train_config([*CHEETAH, "--config", str(generations), "--time-limit-s", "30"])
    assert _budget(config) == (50, 0, 30.0)


def test_no_budget_at_all_is_a_clear_error(capsys):
    assert main(["train", "CartPole", "--device", "cpu", "--time-limit-s", "0"]) == 2
    assert "generations=0, total_steps=0 and time_limit_s=0: no budget" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected generations > 0, total_steps > 0 or time_limit_s > 0"):
        TrainConfig(generations=0, total_steps=0, time_limit_s=0.0)


@pytest.mark.parametrize("field", ["lr_schedule", "sigma_schedule"])
def test_a_schedule_needs_generations_or_steps(field):
    argv = ["CartPole", "--device", "cpu", "--time-limit-s", "60", "--" + field.replace("_", "-"), "linear"]
    with pytest.raises(ValueError, match=f"{field}='linear' is invalid: expected 'constant' when time_limit_s"):
        _train_config(argv)
    config = _train_config([*argv, "--generations", "50"])
    assert getattr(config, field) == "linear" and _budget(config) == (50, 0, 60.0)


def test_time_limit_alone_stops_by_time():
    limit = 1.5
    seen = []
    result = train(_tiny_cartpole(generations=0, time_limit_s=limit), progress_fn=seen.append)
    times = [r["wall_time_s"] for r in result.metrics]
    # The first generation that ends past the limit is the last one.
    assert times[-1] >= limit and all(t < limit for t in times[:-1])
    assert [r["generation"] for r in result.metrics] == list(range(len(times)))
    progress = [r["progress"] for r in seen]  # the time used: what the progress bar shows
    assert progress == pytest.approx([t / limit for t in times])
    assert result.final_eval_return is not None  # the end of the budget is evaluated, as for a generation cap


def test_resume_with_a_time_limit_goes_past_the_stored_generations(tmp_path):
    run = tmp_path / "run"
    first = train(_tiny_cartpole(generations=2, out_dir=str(run)))
    limit = first.metrics[-1]["wall_time_s"] + 1.0  # a time limit counts the whole run
    config = _train_config(["--resume", str(run), "--time-limit-s", str(limit)])
    assert _budget(config) == (0, 0, limit)
    assert config.population == 4 and config.hidden_sizes == (4,)  # the run's own settings
    result = train(config, resume=run)
    assert len(result.metrics) > 2 and result.metrics[-1]["wall_time_s"] >= limit


def test_for_env_budget_replaces_the_recipe_whole():
    """The same rule from Python: ``TrainConfig.for_env(env, time_limit_s=T)`` trains T seconds, not up to the
    recipe's generation cap as well."""
    assert _budget(TrainConfig.for_env("HalfCheetah", device="cuda")) == (1000, 0, 540.0)  # the recipe's
    assert _budget(TrainConfig.for_env("HalfCheetah", device="cuda", time_limit_s=1200)) == (0, 0, 1200.0)
    assert _budget(TrainConfig.for_env("HalfCheetah", device="cuda", generations=50)) == (50, 0, 0.0)
    assert _budget(TrainConfig.for_env("HalfCheetah", device="cuda", generations=50, time_limit_s=9)) == (50, 0, 9.0)
    assert _budget(TrainConfig.for_env("CartPole", total_steps=5000)) == (0, 5000, 0.0)
    assert _budget(TrainConfig.for_env("CartPole", seed=3)) == (30, 0, TrainConfig().time_limit_s)  # none given
    with pytest.raises(ValueError, match="no budget"):
        TrainConfig.for_env("HalfCheetah", device="cuda", time_limit_s=0.0)  # the only limit given is "off"
