"""Runs the worker's end-to-end tests in order, each class with its own worker process:

- test_openai_client: the API (models, chat, completions, adapters, admin, bad requests);
- test_structured_outputs: `response_format` JSON objects and schemas;
- test_tool_calls: tools, tool_choice, streamed calls, tool results; then the same in Llama 3's
  format, through Meta's Llama 3.2 chat template on SmolLM2's weights;
- test_logprobs: logprobs and several answers (`n`);
- test_mcp: an MCP tool's definition hash, read from a real MCP server, and the worker's tool
  loop through the client: calls made, failures not billed, changed and refused tools;
- test_openai_client again: overload, DataNets, p2p, and last the shutdown test (it stops its
  worker).

Run: scripts/worker-e2e.sh [unittest arguments, e.g. -k stream or ApiTest.test_models_list]
"""

import sys

from harness import run
from test_openai_client import ApiTest, DataNetTest, OverloadTest, P2pTest, ShutdownTest
from test_logprobs import LogprobsTest
from test_mcp import McpDefinitionTest, McpRefusedEndpointTest, McpToolLoopTest
from test_structured_outputs import StructuredOutputTest
from test_tool_calls import Llama3ToolCallTest, ToolCallTest

if __name__ == "__main__":
    sys.exit(run([ApiTest, StructuredOutputTest, ToolCallTest, Llama3ToolCallTest, LogprobsTest, McpDefinitionTest, McpToolLoopTest, McpRefusedEndpointTest, OverloadTest, DataNetTest, P2pTest, ShutdownTest]))
