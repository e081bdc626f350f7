"""`PipelineConfig.with_settings`: the `recsys run --set FIELD=VALUE` overrides."""
import pathlib

from click.testing import CliRunner
import pytest

from pipeline import cli
from pipeline import configs


def test_settings_reach_nested_fields_typed_as_the_field():
  config = configs.PipelineConfig().with_settings([
      "model.sequence_encoder=gru", "model.epochs=7", "model.learning_rate=0.01",
      "model.ranker.hidden_units=32,16", "sessions.eval_split=global_time",
      "enable_cache=false", "gate_config=/tmp/gate.yaml"])
  assert config.model.sequence_encoder == "gru"
  assert config.model.epochs == 7 and config.model.learning_rate == 0.01
  assert config.model.ranker.hidden_units == (32, 16)
  assert config.sessions.eval_split == "global_time"
  assert config.enable_cache is False
  assert config.gate_config == pathlib.Path("/tmp/gate.yaml")
  # The rest keeps its defaults.
  assert config.model.embedding_dim == configs.PipelineConfig().model.embedding_dim


@pytest.mark.parametrize("setting, message", [
    ("model.epochs", "expected FIELD=VALUE"),
    ("model.epoch=3", "ModelConfig has no field 'epoch'"),
    ("model.epochs=many", "'many' does not fit the field (int)"),
    ("model.epochs.count=1", "'epochs' is a value, not a group of fields"),
    ("model=3", "a group of fields; set one of them"),
    ("enable_cache=maybe", "expected true or false"),
    # The dataclass's own checks still hold, and name the field and value.
    ("model.sequence_encoder=lstm", "sequence_encoder must be one of"),
])
def test_a_setting_that_does_not_fit_is_refused_naming_it(setting, message):
  with pytest.raises(ValueError) as refused:
    configs.PipelineConfig().with_settings([setting])
  assert str(refused.value).startswith(f"--set {setting!r}: ")
  assert message in str(refused.value)


def test_run_refuses_a_bad_setting_before_doing_anything(tmp_path):
  result = CliRunner().invoke(cli.main, ["run", "--home", str(tmp_path),
                                         "--set", "model.epochs=-1"])
  assert result.exit_code == 1
  assert "Error: --set 'model.epochs=-1': epochs must be >= 1, got -1" in result.output
  assert not (tmp_path / "data").exists()


def test_reward_weights_are_settings_of_the_heads_reward():
  settings = configs.reward_settings("click=1, purchase=2,revenue=0.05,retention=1")
  reward = configs.PipelineConfig().with_settings(settings).model.ranker.reward
  assert (reward.click, reward.purchase, reward.revenue, reward.retention) == (1, 2, 0.05, 1)
  assert reward.novelty == configs.PipelineConfig().model.ranker.reward.novelty
  with pytest.raises(ValueError, match="expected TERM=WEIGHT"):
    configs.reward_settings("retention")
  with pytest.raises(ValueError, match="RewardConfig has no field 'joy'"):
    configs.PipelineConfig().with_settings(configs.reward_settings("joy=1"))


def test_run_refuses_an_unknown_reward_term_before_doing_anything(tmp_path):
  result = CliRunner().invoke(cli.main, ["run", "--home", str(tmp_path), "--reward", "joy=1"])
  assert result.exit_code == 1
  assert "RewardConfig has no field 'joy'" in result.output
  assert not (tmp_path / "data").exists()
