// IAM decisions by a real policy evaluator (@cloud-copilot/iam-simulate): reads lines of {"cases": [...]} on stdin,
// each case {"principal", "action", "resource", "account", "context", "identityPolicies", "resourcePolicy"?,
// "endpointPolicy"? (the policy of a VPC endpoint the request passes through)}, and
// answers each line with one line: a JSON list of {"decision", "errors"?}, one per case. tests/infra/iam.py keeps one
// such process per test process; node_modules comes from make setup.
import { createInterface } from 'node:readline'
import { runSimulation } from '@cloud-copilot/iam-simulate'

for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue
  const { cases } = JSON.parse(line)
  const results = []
  for (const c of cases) {
    const simulation = {
      request: {
        principal: c.principal,
        action: c.action,
        resource: { resource: c.resource, accountId: c.account },
        contextVariables: c.context ?? {},
      },
      identityPolicies: c.identityPolicies.map((policy, i) => ({ name: `policy-${i}`, policy })),
      serviceControlPolicies: [],
      resourceControlPolicies: [],
      resourcePolicy: c.resourcePolicy,
      vpcEndpointPolicies: c.endpointPolicy ? [{ name: 'endpoint', policy: c.endpointPolicy }] : undefined,
    }
    const out = await runSimulation(simulation, {})
    results.push(out.resultType === 'error'
      ? { decision: 'Error', errors: out.errors }
      : { decision: out.overallResult })
  }
  process.stdout.write(JSON.stringify(results) + '\n')
}
