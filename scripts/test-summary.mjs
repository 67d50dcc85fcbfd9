// Prints the one line CI tooling reads: "N passed, N failed" (skipped and todo tests count as failed:
// a test that does not run proves nothing).
import { readFileSync } from 'node:fs'

const file = process.argv[2] ?? '.test-results.json'
let report
try {
  report = JSON.parse(readFileSync(file, 'utf8'))
} catch (err) {
  console.log('0 passed, 1 failed')
  console.error(`no test report at ${file}: ${err.message}`)
  process.exit(1)
}
let passed = 0
let failed = 0
for (const suite of report.testResults ?? []) {
  const results = suite.assertionResults ?? []
  // A file that failed to load has no results but must still count.
  if (results.length === 0 && suite.status === 'failed') failed++
  for (const t of results) t.status === 'passed' ? passed++ : failed++
}
console.log(`${passed} passed, ${failed} failed`)
process.exit(failed > 0 ? 1 : 0)
