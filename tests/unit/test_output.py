"""What a run shows on the terminal and what goes to its log file (sami_ray.logs, sami_ray.progress)."""

import logging
import sys
import warnings

from sami_ray import logs
from sami_ray.progress import Progress, timer


def test_quiet_session_keeps_the_terminal_for_the_run_and_the_rest_for_the_log(tmp_path, capsys):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as ray_lines

    printed_by_ray = []
    ray_lines.add_handler("ray_print_logs", printed_by_ray.append)  # Ray's own printer, as ray.init adds it
    path = tmp_path / "run" / "logs" / "sami-ray.log"
    with logs.session(verbose=False):
        logging.getLogger("sami_ray.early").info("before the run folder is known")
        logs.to_file(path)
        logs.say("run: somewhere")
        print("a library's print")
        print("a library's bar\r 10%\r 50%\r100%", file=sys.stderr)
        logging.getLogger("a_library").warning("a library's warning")  # vllm sets up its own handlers once imported
        warnings.warn("a worker-style FutureWarning", FutureWarning, stacklevel=1)
        logging.getLogger("sami_ray.stages").warning("our own warning")
        logs.ray_started()
        ray_lines.emit({"pid": 4242, "actor_name": "PolicySampler", "ip": "10.0.0.7", "localhost": "10.0.0.1",
                        "is_err": True, "lines": [  # a bar's updates arrive as lines: Ray reads them with universal newlines
                            "GGUF tensors:   0%|          | 0/272 [00:00<?, ?it/s]",
                            "GGUF tensors:  50%|#####     | 136/272 [00:01<00:01, 99it/s]",
                            "GGUF tensors: 100%|##########| 272/272 [00:02<00:00, 99it/s]",
                            "Loading shards:   0% Completed | 0/2 [00:00<?, ?it/s]",
                            "Loading shards:  50% Completed | 1/2 [00:01<00:01, 1it/s]",
                            "\x1b[33mNUMA binding\x1b[0m"]})
        ray_lines.emit({"pid": 31, "actor_name": "RayTrainWorker", "is_err": False,
                        "lines": ['{"__magic_token__": "__ray_tqdm_magic_token__", "x": 0}', "Setting up"]})
        ray_lines.emit({"pid": "autoscaler", "is_err": False, "lines": ["Node status", "Pending:"]})
        bar = Progress("sampling 8 prompts", 4, unit="batch")
        for step in range(4):
            bar.update(1, loss=0.5 - step / 10)
        bar.close()
        timer({}, logs.say)("iter1_sample", lambda: None)
        with logs.on_terminal():
            print("the final table")

    shown = capsys.readouterr()
    assert shown.err == ""
    lines = shown.out.splitlines()
    assert lines == ["run: somewhere", "warning: our own warning",
                     "sampling 8 prompts: 1/4, loss=0.5", "sampling 8 prompts: 2/4, loss=0.4",
                     "sampling 8 prompts: 3/4, loss=0.3", "sampling 8 prompts: 4/4, loss=0.2",
                     "iter1_sample         0.0 s", "the final table"]
    assert printed_by_ray == []  # taken off the terminal ...
    text = path.read_text()
    assert "\r" not in text and "\x1b" not in text
    assert "0/272" not in text and "136/272" not in text and "0/2 " not in text  # a bar's last state only
    assert "__ray_tqdm_magic_token__" not in text and "Node status" not in text  # bar states, status tables
    for expected in ("before the run folder is known", "| run: somewhere", "[stdout] a library's print",
                     "[stderr] 100%", "WARNING a_library: a library's warning", "FutureWarning",
                     "WARNING sami_ray.stages: our own warning", "(PolicySampler pid=4242, ip=10.0.0.7) GGUF tensors: 100%",
                     "(PolicySampler pid=4242, ip=10.0.0.7) Loading shards:  50% Completed | 1/2",
                     "(PolicySampler pid=4242, ip=10.0.0.7) NUMA binding", "(RayTrainWorker pid=31) Setting up",
                     "Ray workers' own log files",
                     "| iter1_sample", "| the final table"):
        assert expected in text, expected  # ... and kept in the run's log
    assert all(name != "sami_ray_log_file" for name, _ in ray_lines.handlers)  # the session ended cleanly
    assert sys.stdout is not None and logs.terminal() is None


def test_verbose_session_streams_everything_and_still_writes_the_log(tmp_path, capsys):
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as ray_lines

    printed_by_ray = []
    ray_lines.add_handler("ray_print_logs", printed_by_ray.append)
    path = tmp_path / "sami-ray.log"
    try:
        with logs.session(verbose=True):
            logs.to_file(path)
            logs.ray_started()
            logging.getLogger("a_library").warning("a library's warning")  # vllm sets up its own handlers once imported
            ray_lines.emit({"pid": 7, "task_name": "train_fn", "lines": ["step 1"]})
    finally:
        ray_lines.remove_handler("ray_print_logs")
    assert "a library's warning" in capsys.readouterr().err
    assert [d["lines"] for d in printed_by_ray] == [["step 1"]]  # Ray prints worker lines as it always does
    assert "(train_fn pid=7) step 1" in path.read_text()


def test_an_error_ending_the_command_is_in_the_log(tmp_path):
    path = tmp_path / "sami-ray.log"
    try:
        with logs.session(verbose=False):
            logs.to_file(path)
            raise RuntimeError("a bug")
    except RuntimeError:
        pass
    assert "RuntimeError: a bug" in path.read_text() and logs.log_path() == path
