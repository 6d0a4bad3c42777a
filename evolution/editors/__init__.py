"""The editors: methods that write facts into an agent (ROME, MEMIT, FT-L, the WISE-style side
memory), the request/report contract they share (`requests`), and where they write (`target`:
the layer and subject token causal tracing picks). Each computes on a materialized model and
returns a report; the placement keeps the change (docs/design.md, "The seam").
(Nothing is imported here, so evolution.locate can use the steps without a cycle.)"""
