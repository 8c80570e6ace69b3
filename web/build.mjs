// Builds the demo editor into dist/: one bundled, minified app.js (no CDN: yjs,
// y-websocket, ProseMirror and y-prosemirror are all inside) plus index.html and app.css.
// The router serves dist/ at `/`.

import { build } from 'esbuild'
import { copyFile, mkdir, rm } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const out = join(here, 'dist')

await rm(out, { recursive: true, force: true })
await mkdir(out, { recursive: true })
await build({
  entryPoints: [join(here, 'demo', 'app.js')],
  bundle: true,
  format: 'esm',
  target: ['es2020'],
  minify: true,
  sourcemap: true,
  outfile: join(out, 'app.js'),
  logLevel: 'warning'
})
for (const file of ['index.html', 'app.css']) {
  await copyFile(join(here, 'demo', file), join(out, file))
}
console.log(`built ${out}`)
