"""The built-in runners from the two other doors besides the SDK: a YAML spec
file through the real CLI, and a raw gRPC client (the generated stub, no SDK)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from sp_cli import cli
from sp_http import HttpServer, Reply
from sp_openai import OpenAIStandIn
from sp_openai import Reply as Completion

from statepipe.client import Client
from statepipe_api.v1 import statepipe_pb2 as pb
from statepipe_api.v1 import statepipe_pb2_grpc as pb_grpc

YAML = """\
name: runner-tour
nodes:
  - id: ask
    kind: llm
    params:
      base_url: {base_url}
      model: stand-in-1
      prompt: "Name three colours, {{{{ input.who }}}}."
  - id: fetch
    kind: http
    params:
      url: {url}
      query: {{q: "{{{{ input.who }}}}"}}
  - id: shout
    kind: shell
    after: [ask]
    params:
      argv: [{python}, -c, "import sys; print(sys.argv[1].upper())", "{{{{ nodes.ask.output }}}}"]
  - id: each
    kind: map
    after: [fetch]
    params:
      items: "{{{{ nodes.fetch.output.body.colours }}}}"
      node: {{kind: noop, params: {{value: "{{{{ index }}}}:{{{{ item }}}}"}}}}
"""


def tour(model: OpenAIStandIn, search: HttpServer) -> str:
    return YAML.format(base_url=model.base_url, url=search.url("/colours"), python=sys.executable)


def check(run: Any) -> None:
    assert run.status == "SUCCEEDED", [(n.node_id, n.error) for n in run.nodes]
    assert run.node("ask").output == "Red, green, blue."
    assert run.node("shout").output["stdout"] == "RED, GREEN, BLUE.\n"
    assert run.node("fetch").output["status"] == 200
    assert run.node("each").output == ["0:red", "1:green"]


def serve() -> tuple[OpenAIStandIn, HttpServer]:
    search = HttpServer()
    search.route("/colours", Reply(json={"colours": ["red", "green"]}))
    model = OpenAIStandIn(lambda body: Completion(text="Red, green, blue."))
    return model, search


def test_a_yaml_spec_file_runs_every_kind_through_the_cli(
    env: dict[str, str], tmp_path: Path, client: Client
) -> None:
    model, search = serve()
    with model:
        path = tmp_path / "tour.yaml"
        path.write_text(tour(model, search))
        proc = cli(env, "run", str(path), "--input", '{"who": "ada"}')
        search.close()
    assert proc.returncode == 0, proc.stderr
    run_id = proc.stdout.splitlines()[0]
    check(client.get_run(run_id))  # another process, the same database
    assert json.loads(proc.stdout.splitlines()[1])["shout"]["exit_code"] == 0


def test_a_raw_grpc_client_runs_every_kind(server: Any) -> None:
    import yaml

    model, search = serve()
    with model, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.StatePipeStub(channel)
        spec = json_format.ParseDict(yaml.safe_load(tour(model, search)), pb.WorkflowSpec())
        request = pb.StartRunRequest(spec=spec)
        request.input.struct_value.update({"who": "ada"})
        run_id = stub.StartRun(request).run.run_id
        # WatchRun ends once the run has ended (batches of events).
        streamed = [
            e for batch in stub.WatchRun(pb.WatchRunRequest(run_id=run_id)) for e in batch.events
        ]
        assert [e.seq for e in streamed] == list(range(1, len(streamed) + 1))
        search.close()
        with Client(server.address) as client:
            check(client.get_run(run_id))
        tokens = [e.message for e in streamed if e.kind == "token"]
        assert "".join(tokens) == "Red, green, blue."
