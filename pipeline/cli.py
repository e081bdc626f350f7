"""`recsys`: run the pipeline, serve what it pushed, and ask the server for recommendations.

The command line sits above every stage, so it lives with the pipeline, the top layer. It must
answer `--help` at once: at start-up it imports only click and the plain-valued configuration;
each command imports the stages it runs (TensorFlow, TFX, Beam) in its own body. These are the
project's only function-level imports, and they are there for start-up time alone.
"""
import dataclasses
import logging
import os
import pathlib
import sys
from typing import Optional, Sequence
import warnings

import click

# The command line is for people: keep Google client libraries' Python-version notices out of its
# output (components/__init__.py keeps TensorFlow's C++ start-up chatter out).
warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.")

from pipeline import configs
from pipeline import scheduler
from serving.config import RequestLogWriterConfig

FORMATS = ("generic", "movielens", "movielens-100k")
# How much of an unexpected error's first line a refusal quotes; the log file has all of it.
_REASON_CHARACTERS = 300
DEFAULT_DATASET = "default"


class UsageError(click.ClickException):
  """A problem with the user's input, reported without a traceback."""


class RunFailedError(click.ClickException):
  """A stage of the run stopped on an error it did not expect; reported in one line."""


class RunInProgressError(click.ClickException):
  """Another run holds the lock; the exit code tells a scheduler to skip, not to alarm."""
  exit_code = scheduler.RUN_IN_PROGRESS_EXIT_CODE


def _config(home: Optional[str], **overrides) -> configs.PipelineConfig:
  return configs.PipelineConfig().with_overrides(
      home=pathlib.Path(home).resolve() if home else None, **overrides)


def _default_dataset(config: configs.PipelineConfig):
  """The built-in dataset, generated once per home so that re-runs hit the pipeline cache."""
  from components.simulation import generator
  return generator.ensure_dataset(config.data_dir / DEFAULT_DATASET / "raw")


@click.group()
def main() -> None:
  """Train, gate, push and serve a TFRS recommender with TFX."""


@main.command()
@click.option("--interactions", type=click.Path(exists=True, dir_okay=False),
              help="Your interaction log (CSV or Parquet). Default: the built-in generated dataset.")
@click.option("--items", type=click.Path(exists=True, dir_okay=False),
              help="Item attributes to join on item_id (CSV).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="generic", show_default=True,
              help="Layout of --interactions/--items; see README.")
@click.option("--home", type=click.Path(file_okay=False),
              help="Where runs, metadata and served models live (default $RECSYS_HOME or ./.recsys).")
@click.option("--epochs", type=int,
              help="Training epochs (default in components/models/config.py).")
@click.option("--gate-config", type=click.Path(exists=True, dir_okay=False),
              help="Release gate rules (YAML; default schemas/gate/gate.yaml).")
@click.option("--reward", metavar="TERM=WEIGHT,...",
              help="The DQN head's reward weights (RewardConfig in components/models/config.py), "
              "e.g. click=1,purchase=1,revenue=0.01,retention=1; terms left out keep their "
              "defaults.")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Any field of pipeline/configs.py's PipelineConfig, repeatable, e.g. "
              "--set model.sequence_encoder=gru --set sessions.eval_fraction=0.2")
@click.option("--no-cache", is_flag=True, help="Re-run every component even if inputs are unchanged.")
@click.option("--allow-drift", is_flag=True,
              help="Go on although the data drifted from the previous span (recorded in ML "
              "Metadata).")
@click.option("--beam-arg", "beam_args", multiple=True,
              help="A Beam pipeline option, repeatable; replaces the in-process defaults, e.g. "
              "--beam-arg=--direct_running_mode=multi_processing --beam-arg=--direct_num_workers=2")
@click.option("--beam-preset", type=click.Choice(sorted(configs.BEAM_PRESETS)),
              help="A documented Beam runner argument set (pipeline/beam_args.py) to start "
              "from; --beam-arg options override it.")
@click.option("--min-users", type=int, help="Fewest distinct users with an engagement to train "
              f"on (default {configs.PipelineConfig.minimums.users}).")
@click.option("--min-items", type=int, help="Fewest distinct items engaged with (default "
              f"{configs.PipelineConfig.minimums.items}).")
@click.option("--min-engagements", type=int, help="Fewest engagements (default "
              f"{configs.PipelineConfig.minimums.engagements}).")
@click.option("--latest-span", is_flag=True,
              help="Train on the home's latest span as it is, e.g. the one `recsys ingest-logs` "
              "made, instead of ingesting files.")
@click.option("--verbose", is_flag=True,
              help="Show the libraries' logs on the terminal too, not only in the run's log file.")
def run(interactions, items, fmt, home, epochs, gate_config, reward, settings, no_cache,
        allow_drift, beam_args, beam_preset, min_users, min_items, min_engagements, latest_span,
        verbose) -> None:
  """Run the whole pipeline under TFX's LocalDagRunner and push a blessed model."""
  from pipeline import run_output

  if latest_span and (interactions or items):
    raise UsageError("--latest-span trains on the span already ingested; give it no "
                     "--interactions or --items")

  config = _config(home, gate_config=pathlib.Path(gate_config).resolve() if gate_config else None,
                   enable_cache=False if no_cache else None, allow_drift=allow_drift or None,
                   beam_pipeline_args=_beam_args(beam_preset, beam_args))
  minimums = {name: value for name, value in (
      ("users", min_users), ("items", min_items), ("engagements", min_engagements))
               if value is not None}
  try:
    config = dataclasses.replace(config,
                                 minimums=dataclasses.replace(config.minimums, **minimums))
    config = config.with_settings(configs.reward_settings(reward or "") + list(settings))
  except ValueError as error:
    raise UsageError(str(error)) from error
  if epochs is not None:
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, epochs=epochs))
  # One run at a time per home: two would write data, spans and versions over each other.
  try:
    with scheduler.run_lock(config.home), run_output.captured(
        config.home, verbose, click.echo, sys.stdout.isatty()) as output:
      click.echo(f"Logs: {output.log_path}")
      _run_pipeline(config, interactions, items, fmt, output, latest_span)
  except scheduler.RunInProgress as error:
    raise RunInProgressError(str(error)) from error


def _run_pipeline(config: configs.PipelineConfig, interactions: Optional[str],
                  items: Optional[str], fmt: str, output, latest_span: bool = False) -> None:
  """Ingests the files as a new span (or takes the latest one), runs the pipeline, prints what
  it did.

  Anything that stops the run ends in one line naming the stage and the reason, with the
  version being served; the traceback of an unexpected error goes to the run's log file.
  """
  from components.data import ingest
  from components.data import spans
  from components.data import validation as data_validation
  from components.evaluation import release_gate
  from pipeline import local_runner
  from pipeline import run_report

  try:
    release_gate.GateConfig.load(config.gate_config)
  except release_gate.GateConfigError as error:
    raise UsageError(str(error)) from error
  input_base = config.input_base
  if latest_span:
    existing = spans.spans(input_base)
    if not existing:
      raise UsageError(f"--latest-span: {input_base} holds no span yet; run with the built-in "
                       "data or --interactions first")
    click.echo(f"Training on span {max(existing)} of {input_base}")
  else:
    if interactions is None:
      dataset = _default_dataset(config)
      interactions, items, fmt = dataset.interactions, dataset.items, "generic"
    else:
      # The simulator's world holds the built-in dataset's users, not these.
      config = dataclasses.replace(config, simulator_users=0)
    try:
      staged = ingest.prepare_dataset(interactions, items, fmt=fmt,
                                      out_dir=input_base / spans.STAGING_DIR,
                                      minimums=config.minimums)
    except ingest.InputDataError as error:
      raise UsageError(f"{error}; {run_report.serving_status(config)}") from error
    span = spans.publish(staged / ingest.EXAMPLES_FILE, input_base)
    click.echo(f"Ingested {interactions} as span {span} of {input_base}")

  versions_before = run_report.pushed_versions(config)
  try:
    local_runner.run(config, input_base)
  except data_validation.DataValidationError as error:
    output.progress.failed()
    raise UsageError(f"{error}\n{run_report.serving_status(config)}") from error
  except Exception as error:  # pylint: disable=broad-except
    stage = output.progress.failed() or "The pipeline"
    logging.exception("%s failed", stage)
    reason = (str(error).strip().splitlines() or [""])[0][:_REASON_CHARACTERS]
    raise RunFailedError(f"{stage} failed: {type(error).__name__}: {reason}; nothing was pushed "
                         f"and {run_report.serving_status(config)} (the traceback is in "
                         f"{output.log_path})") from error
  skew = run_report.serving_skew(config)
  if skew:
    click.echo(skew)
  click.echo(run_report.describe(config, versions_before))


@main.command("ingest-logs")
@click.option("--predictions", required=True, type=click.Path(exists=True, file_okay=False),
              help="The server's request log directory: its closed *.tfrecord PredictionLog "
              "files (the logging config's filename_prefix's directory).")
@click.option("--feedback", required=True, type=click.Path(exists=True, dir_okay=False),
              help="What users did with the served items: CSV (or Parquet) of request_id, "
              "item_id, event (click or purchase) and optional price; see README.")
@click.option("--slate-size", type=click.IntRange(min=1),
              help="How many of each answer's items the app shows, the first ones (default: "
              "all of the model's top_k); only those are impressions.")
@click.option("--home", type=click.Path(file_okay=False))
def ingest_logs(predictions, feedback, slate_size, home) -> None:
  """Join the served slates with the app's feedback into a new span for `recsys run
  --latest-span`."""
  from components.data import ingest
  from components.data import serving_logs

  config = _config(home)
  # One writer of spans at a time per home, as for `recsys run`.
  try:
    with scheduler.run_lock(config.home):
      report = serving_logs.ingest_logs(predictions, feedback, config.input_base,
                                        config.minimums, slate_size)
  except scheduler.RunInProgress as error:
    raise RunInProgressError(str(error)) from error
  except ingest.InputDataError as error:
    raise UsageError(str(error)) from error
  skipped = (f"; {report.already_ingested} slates were ingested before"
             if report.already_ingested else "")
  unknown = (f"; {report.unknown_requests} feedback rows name requests the log does not hold "
             "(not sampled) and were skipped" if report.unknown_requests else "")
  click.echo(f"Joined {report.slates} served slates with {report.engagements} engagements"
             f"{skipped}{unknown}: span {report.span} of {config.input_base} holds "
             f"{report.events} events; `recsys run --latest-span` trains on it")


@main.command()
@click.argument("run_id", required=False)
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--list", "list_runs", is_flag=True, help="List the evaluated runs and verdicts.")
@click.option("--open", "open_report", is_flag=True, help="Open the report in a browser.")
def report(run_id, home, list_runs, open_report) -> None:
  """Print the path of a run's evaluation report (default: the newest run's)."""
  from pipeline import run_report

  config = _config(home)
  evaluations = run_report.evaluations(config)
  if not evaluations:
    raise UsageError(f"No run under {config.home} has evaluated a model yet")
  if list_runs:
    for evaluation in evaluations:
      click.echo(f"{evaluation.run_id}  {evaluation.reason}")
    return
  chosen = [evaluation for evaluation in evaluations if run_id in (None, evaluation.run_id)]
  if not chosen:
    raise UsageError(f"No evaluation for run {run_id!r}; `recsys report --list` lists the runs")
  evaluation = chosen[-1]
  if evaluation.report is None:
    raise UsageError(f"Run {evaluation.run_id} wrote no report: {evaluation.reason}")
  click.echo(f"{evaluation.run_id}: {evaluation.reason}")
  click.echo(str(evaluation.report))
  if open_report:
    click.launch(str(evaluation.report))


@main.command()
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--version", type=int, help="A pushed version (default: the stable one).")
def lineage(home, version) -> None:
  """Show what a pushed model version came from: data span, schema, statistics, transform
  graph, trainer run, evaluation and blessings."""
  from pipeline import lineage as lineage_lib

  try:
    click.echo(lineage_lib.lineage(_config(home), version).describe())
  except lineage_lib.LineageError as error:
    raise UsageError(str(error)) from error


@main.command()
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--version", type=int, help="A pushed version (default: the stable one).")
@click.option("--trials", type=int, help="Weightings to try (default "
              f"{configs.PipelineConfig.tradeoffs.trials}).")
@click.option("--seed", type=int, help="The search's seed; a seed repeats its result.")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Any field of PipelineConfig, e.g. of its TradeoffConfig "
              "(components/evaluation/config.py), repeatable: --set tradeoffs.choice=knee")
def tune(home, version, trials, seed, settings) -> None:
  """Search the trade-off between the objectives for a pushed model: NSGA-II over its ranking
  head's combiner weights, scored on the training users its head was not fitted to. Writes the
  Pareto front, its hypervolume and the chosen weights to <home>/tradeoffs/<version>.json."""
  from pipeline import lineage as lineage_lib
  from pipeline import tuning

  overrides = [f"tradeoffs.{name}={value}" for name, value in (("trials", trials), ("seed", seed))
               if value is not None]
  try:
    config = _config(home).with_settings(overrides + list(settings))
  except ValueError as error:
    raise UsageError(str(error)) from error
  try:
    result, path = tuning.tune(config, version, show_progress=True)
  except (lineage_lib.LineageError, ValueError) as error:
    raise UsageError(str(error)) from error
  click.echo(tuning.describe(result))
  click.echo(f"Written to {path}")


@main.command("compile")
@click.option("--kubeflow", "output", required=True, type=click.Path(dir_okay=False),
              help="Where to write the KFP v2 pipeline spec (JSON).")
@click.option("--image", help="Pipeline image built from ./Dockerfile (default in configs.py).")
@click.option("--pipeline-root", help="Object-store root for component outputs, e.g. gs://b/p.")
@click.option("--input-base", help="Object-store root of the ingested spans.")
@click.option("--serving-root", help="Object-store root TF Serving reads models.config from.")
@click.option("--gpu-type", help="Accelerator for the Trainer and infra validation, e.g. "
              "NVIDIA_TESLA_T4; --gpu-count 0 asks for none.")
@click.option("--gpu-count", type=int)
@click.option("--beam-arg", "beam_args", multiple=True,
              help="A Beam option for the pods, repeatable; replaces the default multi-process "
              "DirectRunner, e.g. a --beam-preset's set (README).")
@click.option("--beam-preset", type=click.Choice(sorted(configs.BEAM_PRESETS)),
              help="A documented Beam runner argument set to start from.")
@click.option("--set", "settings", multiple=True, metavar="FIELD=VALUE",
              help="Any field of pipeline/configs.py's PipelineConfig, repeatable, e.g. "
              "--set kubeflow.serving_request_log.enabled=true")
def compile_command(output, image, pipeline_root, input_base, serving_root, gpu_type, gpu_count,
                    beam_args, beam_preset, settings) -> None:
  """Compile the pipeline for Kubeflow Pipelines (TFX's KubeflowV2DagRunner)."""
  from pipeline import kubeflow_runner

  try:
    config = _config(None).with_settings(list(settings))
  except ValueError as error:
    raise UsageError(str(error)) from error
  args = _beam_args(beam_preset, beam_args)
  kubeflow = dataclasses.replace(config.kubeflow, **{key: value for key, value in dict(
      image=image, pipeline_root=pipeline_root, input_base=input_base,
      serving_root=serving_root, gpu_type=gpu_type, gpu_count=gpu_count,
      beam_pipeline_args=args).items() if value is not None})
  path = kubeflow_runner.compile_pipeline(dataclasses.replace(config, kubeflow=kubeflow),
                                          pathlib.Path(output))
  click.echo(f"Wrote the Kubeflow pipeline spec to {path} (image {kubeflow.image}, pipeline "
             f"root {kubeflow.pipeline_root})")


def _beam_args(preset: Optional[str], args: Sequence[str]) -> Optional[tuple]:
  """The preset's arguments followed by the given ones, validated; None if neither is given."""
  from pipeline import beam_args as beam_args_lib

  if preset is None and not args:
    return None
  combined = tuple(configs.BEAM_PRESETS[preset] if preset else ()) + tuple(args)
  try:
    return beam_args_lib.validate(combined)
  except beam_args_lib.BeamArgsError as error:
    raise UsageError(str(error)) from error


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--cron", required=True,
              help='Five-field cron expression in local time, e.g. "0 3 * * *" (03:00 daily).')
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--max-runs", type=int, help="Stop after this many scheduled runs (default: never).")
@click.option("--kubeflow", "spec", type=click.Path(exists=True, dir_okay=False),
              help="Instead of running here, create a recurring run of this compiled spec on "
              "the Kubeflow Pipelines at --host.")
@click.option("--host", help="Kubeflow Pipelines API endpoint, with --kubeflow.")
@click.option("--experiment", default="recsys", show_default=True)
@click.argument("run_args", nargs=-1, type=click.UNPROCESSED)
def schedule(cron, home, max_runs, spec, host, experiment, run_args) -> None:
  """Run the pipeline on a cron schedule, one run at a time; RUN_ARGS go to `recsys run`."""
  try:
    scheduler.validate_cron(cron)
  except ValueError as error:
    raise UsageError(str(error)) from error
  if spec:
    import kfp

    from pipeline import kubeflow_runner

    if not host:
      raise UsageError("--kubeflow needs --host, the Kubeflow Pipelines API endpoint")
    job = kubeflow_runner.create_recurring_run(
        kfp.Client(host=host), pathlib.Path(spec), cron, experiment,
        job_name=f"{configs.PipelineConfig().pipeline_name} {cron}")
    click.echo(f"Created recurring run {job.recurring_run_id} ({cron}) in experiment "
               f"{experiment!r} at {host}")
    return
  config = _config(home)
  command = [sys.executable, "-m", "pipeline.cli", "run", "--home", str(config.home), *run_args]
  log_path = config.home / scheduler.LOG_FILE
  click.echo(f"Running `{' '.join(command[2:])}` at {cron!r}; outcomes in {log_path}")
  scheduler.Scheduler(cron, scheduler.run_command(command), log_path).run(max_runs)


@main.command()
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; the default keeps the server off the network.")
@click.option("--port", default=8500, show_default=True, type=int, help="gRPC port.")
@click.option("--rest-port", default=8501, show_default=True, type=int,
              help="REST API and Prometheus metrics port.")
@click.option("--request-log-max-file-bytes", default=RequestLogWriterConfig.max_file_bytes,
              show_default=True, type=int, help="A request log file is closed at this size...")
@click.option("--request-log-max-file-seconds", default=RequestLogWriterConfig.max_file_seconds,
              show_default=True, type=float, help="...or this long after it was opened.")
@click.option("--request-log-queue-records", default=RequestLogWriterConfig.queue_records,
              show_default=True, type=int,
              help="Records waiting to be written; beyond, they are dropped and counted.")
def serve(home, host, port, rest_port, request_log_max_file_bytes, request_log_max_file_seconds,
          request_log_queue_records) -> None:
  """Serve the pushed model over TF Serving's gRPC and REST APIs until interrupted."""
  from serving import server as server_lib

  config = _config(home)
  try:
    request_log = RequestLogWriterConfig(max_file_bytes=request_log_max_file_bytes,
                                         max_file_seconds=request_log_max_file_seconds,
                                         queue_records=request_log_queue_records)
  except ValueError as error:
    raise UsageError(str(error)) from error
  command = server_lib.command(config.serving_root, config.model_name, host, port, rest_port,
                               request_log=request_log)
  # The server replaces this process rather than running as its child: the signals systemd,
  # Docker or Kubernetes send to the main process (SIGTERM) then reach the server itself, which
  # finishes the requests in flight and stops. A child would outlive a terminated parent.
  sys.stdout.flush()
  os.execv(command[0], command)


@main.command()
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--to", "to_version", type=int,
              help="The version to serve (default: the one stable before the newest push).")
@click.option("--label-delay", type=float,
              help="Seconds between serving a version and labelling it stable; set it above TF "
              "Serving's config poll when TF Serving reads the serving root (README).")
def rollback(home, to_version, label_delay) -> None:
  """Label an earlier pushed version stable; servers switch to it at their next poll."""
  from serving import model_config
  from serving import push

  config = _config(home, serving_label_delay_seconds=label_delay)
  try:
    version = push.rollback(config.serving_root, config.model_name, to_version,
                            config.serving_label_delay_seconds)
  except push.PushError as error:
    raise UsageError(str(error)) from error
  click.echo(f"Version {version} of {config.model_name!r} is now stable in "
             f"{config.serving_root / model_config.MODEL_CONFIG_FILE}")


# History items the printed recommendations name: the request sends up to contract.HISTORY_LENGTH.
_SHOWN_HISTORY = 5


def _print_recommendations(user: str, history: Sequence[str], recommendations) -> None:
  if history:
    latest = ", ".join(history[-_SHOWN_HISTORY:])
    shown = latest if len(history) <= _SHOWN_HISTORY else f"{len(history)} items, latest {latest}"
  else:
    shown = "none"
  click.echo(f"Top {len(recommendations)} for user {user} (history: {shown}):")
  for rank, recommendation in enumerate(recommendations, start=1):
    click.echo(f"{rank:>3}. {recommendation.item_id:<24} score {recommendation.score:.4f}")


@main.command()
@click.option("--user", help="One user id, answered by a running server over gRPC.")
@click.option("--history", default="", help="Comma-separated recent item ids, oldest first.")
@click.option("--k", default=10, show_default=True, type=int)
@click.option("--server", default="127.0.0.1:8500", show_default=True,
              help="host:port of the local server or of TensorFlow Serving.")
@click.option("--model-name", default=configs.PipelineConfig.model_name, show_default=True)
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False),
              help="Batch mode: an exported SavedModel directory (a pushed version).")
@click.option("--users", help="Batch mode: a file of user ids, one per line, or 'all' (every "
              "user of --exclude-seen).")
@click.option("--exclude-seen", "seen_path", type=click.Path(exists=True, dir_okay=False),
              help="Batch mode: interactions whose engaged items are removed from each user's "
              "recommendations and serve as their history.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="generic", show_default=True,
              help="Layout of --exclude-seen.")
@click.option("--output", type=click.Path(dir_okay=False), help="Batch mode: the CSV to write.")
@click.option("--adapt-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Batch mode: gradient steps that adapt each user's vector to their latest "
                   "items first (cold start; README, 'Cold start').")
def recommend(user, history, k, server, model_name, model_dir, users, seen_path, fmt,
              output, adapt_steps) -> None:
  """One user's top-k from a server (--user), or every requested user's from a model (--model).

  Batch mode writes user_id,rank,item_id,score ranked over the whole catalog.
  """
  if (user is None) == (model_dir is None):
    raise click.UsageError("give either --user (ask a server) or --model (batch)")
  if model_dir is not None:
    _recommend_batch(model_dir, users, seen_path, fmt, k, output, adapt_steps)
    return
  if adapt_steps:
    raise click.UsageError("--adapt-steps is for batch mode (--model)")
  import grpc

  from serving import client as client_lib

  history_items = [item for item in history.split(",") if item]
  with client_lib.RecommenderClient(server, model_name) as client:
    try:
      recommendations = client.recommend(user, history_items, k=k)
    except grpc.RpcError as error:
      raise UsageError(f"{server}: {error.code().name}: {error.details()}") from error
  _print_recommendations(user, history_items, recommendations)


def _recommend_batch(model_dir, users, seen_path, fmt, k, output, adapt_steps) -> None:
  from components.data import ingest
  from serving import batch

  if users is None or output is None:
    raise click.UsageError("batch mode needs --users and --output")
  try:
    seen = batch.engaged_items(ingest.load_interactions(seen_path, fmt=fmt)) if seen_path else {}
  except ingest.InputDataError as error:
    raise UsageError(str(error)) from error
  if users == "all":
    if not seen_path:
      raise click.UsageError("--users all takes the users of --exclude-seen; give that file")
    user_ids = sorted(seen)
  else:
    lines = pathlib.Path(users).read_text(encoding="utf-8").splitlines()
    user_ids = [line.strip() for line in lines if line.strip()]
  recommendations = batch.recommend(model_dir, user_ids, seen, k, adapt_steps=adapt_steps)
  recommendations.to_csv(output, index=False)
  click.echo(f"Wrote {len(recommendations)} recommendations for {len(user_ids)} users to {output}")


@main.command("adapt-users")
@click.option("--model", "model_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A pushed SavedModel version directory.")
@click.option("--interactions", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The new users' interactions; their engaged items, in time order, are what "
                   "each user's vector adapts to.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="generic", show_default=True,
              help="Layout of --interactions.")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help="Gradient steps per user (default: ModelConfig.adapt_steps).")
@click.option("--output", required=True, type=click.Path(),
              help="The new version directory to write, e.g. the serving directory's next "
                   "version number; never overwritten.")
def adapt_users(model_dir, interactions, fmt, steps, output) -> None:
  """Store new users' adapted vectors in a new model version (cold start; README).

  Users the model knows keep their trained embedding; each unknown user of --interactions is
  served from a vector adapted to their items, by id alone, once the version is served.
  """
  from components.data import ingest
  from components.models.config import ModelConfig
  from serving import adapted_users
  from serving import batch

  try:
    histories = batch.engaged_items(ingest.load_interactions(interactions, fmt=fmt))
  except ingest.InputDataError as error:
    raise UsageError(str(error)) from error
  try:
    stored = adapted_users.write_adapted_version(model_dir, output, histories,
                                                 steps or ModelConfig().adapt_steps)
  except (FileExistsError, ValueError) as error:
    raise UsageError(str(error)) from error
  click.echo(f"Stored adapted vectors of {stored} new users (of {len(histories)}) in {output}")


@main.command()
@click.option("--home", type=click.Path(file_okay=False))
@click.option("--user", help="User id (default: the most active user of the built-in dataset).")
@click.option("--k", default=10, show_default=True, type=int)
def demo(home, user, k) -> None:
  """Start the server on 127.0.0.1, print one user's top-k over gRPC, stop the server."""
  from components.data import ingest
  from schemas import contract
  from serving import client as client_lib
  from serving import server as server_lib

  config = _config(home)
  events = ingest.load_interactions(_default_dataset(config).interactions)
  events = events[events[contract.EVENT].isin(contract.ENGAGEMENT_EVENTS)]
  user = user or events[contract.USER_ID].value_counts().idxmax()
  user_events = events[events[contract.USER_ID] == user].sort_values(
      contract.TIMESTAMP, kind="stable")
  history = list(user_events[contract.ITEM_ID].iloc[-contract.HISTORY_LENGTH:])
  with server_lib.running_process(config.serving_root, config.model_name) as (target, _), \
      client_lib.RecommenderClient(target) as client:
    client.wait_until_available(timeout=120)
    _print_recommendations(user, history, client.recommend(user, history, k=k))


if __name__ == "__main__":
  main()
