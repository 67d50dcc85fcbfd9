#!/usr/bin/env node
/**
 * hypeman-ts-server: argv in (command-line.ts), `createServer` out (the same factory embedders call).
 *
 *   serve   open the manager over --data-dir and serve hypeman's API until SIGTERM/SIGINT, which
 *           stop accepting, let in-flight requests finish and leave the VMs running (the next
 *           serve reattaches to them).
 *   token   print a JWT signed with the same secret, for clients (HYPEMAN_API_KEY).
 *
 * The secret comes from $JWT_SECRET or --jwt-secret-file; neither it nor a token is ever logged.
 */
import { readFile } from 'node:fs/promises'
import { isMain, ValidationError } from '@hypeman-ts/common'
import { Hypeman } from '@hypeman-ts/core'
import { parseCommandLine, USAGE } from './command-line.js'
import { mintToken } from './jwt.js'
import { createServer, type HypemanServer } from './server.js'

async function secretFrom(file: string | undefined): Promise<Buffer> {
  // A trailing newline (echo > file) is not part of the secret.
  if (file) return Buffer.from((await readFile(file, 'utf8')).trim(), 'utf8')
  const env = process.env.JWT_SECRET
  if (!env) throw new ValidationError('jwt-secret-file', 'set JWT_SECRET or pass --jwt-secret-file')
  return Buffer.from(env, 'utf8')
}

const say = (line: string) => process.stderr.write(`hypeman-ts-server: ${line}\n`)

export async function main(argv: string[]): Promise<number> {
  const cmd = parseCommandLine(argv)
  if (cmd.command === 'help' || cmd.command === 'usage') {
    process[cmd.command === 'help' ? 'stdout' : 'stderr'].write(`${USAGE}\n`)
    return cmd.command === 'help' ? 0 : 2
  }
  const secret = await secretFrom(cmd.secretFile)
  if (cmd.command === 'token') {
    const { subject, ttlSeconds } = cmd
    process.stdout.write(`${mintToken(secret, { ...(subject ? { subject } : {}), ...(ttlSeconds ? { ttlSeconds } : {}) })}\n`)
    return 0
  }

  const hm = await Hypeman.open(cmd.hypeman)
  let server: HypemanServer | undefined
  try {
    server = await createServer(hm, { ...cmd.server, jwtSecret: secret })
    const addr = await server.listen(cmd.listen)
    if (cmd.metricsListen && server.metrics) {
      const m = await server.metrics.listen(cmd.metricsListen)
      say(`metrics on ${m.address}:${m.port}`)
    }
    say(`listening on ${addr.address}:${addr.port}`)
  } catch (err) {
    await server?.close().catch(() => {})
    await hm.close()
    throw err
  }
  await new Promise<void>((resolve) => {
    const stop = (sig: NodeJS.Signals) => {
      say(`${sig}: finishing in-flight requests; VMs keep running`)
      resolve()
    }
    process.once('SIGTERM', stop)
    process.once('SIGINT', stop)
  })
  await server.close()
  await hm.close()
  return 0
}

// Run when executed (directly, or through the bin link npm makes), not when imported: tests
// import main, and \`hypeman-ts serve\` imports the server's.
if (isMain(import.meta.url)) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      say(err instanceof Error ? err.message : String(err))
      process.exit(2)
    },
  )
}
