// IAM decisions by a real policy evaluator (@cloud-copilot/iam-simulate): reads {"cases": [...]} on stdin, each
// {"principal", "action", "resource", "account", "context", "identityPolicies", "resourcePolicy"?,
// "endpointPolicy"? (a VPC endpoint's policy the request passes through)}, and prints one
// {"decision", "errors"?} per case as a JSON list. Called by tests/infra/iam.py; node_modules comes from make setup.
import { runSimulation } from '@cloud-copilot/iam-simulate'

const chunks = []
for await (const chunk of process.stdin) chunks.push(chunk)
const { cases } = JSON.parse(Buffer.concat(chunks).toString('utf8'))
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
process.stdout.write(JSON.stringify(results))
