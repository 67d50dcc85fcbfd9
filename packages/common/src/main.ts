/**
 * Whether a module is the program node was started with: `node cli.js`, or the symlink npm puts
 * in node_modules/.bin (resolved). A CLI module runs itself only then, so tests and other CLIs
 * can import its `main`.
 */
import { realpathSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

export function isMain(moduleUrl: string): boolean {
  const started = process.argv[1]
  if (!started) return false
  try {
    return realpathSync(started) === realpathSync(fileURLToPath(moduleUrl))
  } catch {
    return false
  }
}
