// Checks every query of the Grafana dashboards as PromQL: they become recording rules of a
// throwaway rules file that `promtool check rules` parses (promtool has no offline query
// check of its own). Run by tests/run.sh (the `alerts` step): node deploy/grafana/check-queries.mjs

import { readdirSync, readFileSync, writeFileSync, mkdtempSync, rmSync } from 'node:fs'
import { execFileSync } from 'node:child_process'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const dir = join(dirname(fileURLToPath(import.meta.url)), 'dashboards')
const rules = []
for (const file of readdirSync(dir).filter((f) => f.endsWith('.json')).sort()) {
  const board = JSON.parse(readFileSync(join(dir, file), 'utf8'))
  for (const panel of board.panels) {
    for (const target of panel.targets) {
      rules.push({ record: `dashboard:query:${rules.length}`, expr: target.expr, where: `${file} / ${panel.title}` })
    }
  }
}
const yaml = ['groups:', '  - name: dashboards', '    rules:']
for (const r of rules) {
  yaml.push(`      - record: "${r.record}"`, `        expr: ${JSON.stringify(r.expr)}`)
}
const tmp = mkdtempSync(join(tmpdir(), 'troupe-dashboards-'))
try {
  const file = join(tmp, 'dashboards.rules.yml')
  writeFileSync(file, yaml.join('\n') + '\n')
  execFileSync('promtool', ['check', 'rules', file], { stdio: 'inherit' })
  console.log(`${rules.length} dashboard queries parse as PromQL`)
} finally {
  rmSync(tmp, { recursive: true, force: true })
}
