import { pipeline } from 'node:stream/promises'
import { Readable, Writable } from 'node:stream'
import { describe, expect, it } from 'vitest'
import { CommandError, commandStream, run, runJson, ToolMissingError } from '../src/index.js'

describe('run', () => {
  it('returns stdout and stderr', async () => {
    const r = await run('sh', ['-c', 'echo out; echo err >&2'])
    expect(r).toEqual({ stdout: 'out\n', stderr: 'err\n', code: 0 })
  })

  it('feeds stdin', async () => {
    expect((await run('cat', [], { input: 'hello' })).stdout).toBe('hello')
  })

  it('puts argv, exit code and stderr into the thrown error', async () => {
    const err = await run('sh', ['-c', 'echo "no such bridge" >&2; exit 3'], { step: 'network.bridge' }).catch((e) => e)
    expect(err).toBeInstanceOf(CommandError)
    expect(err.code).toBe('command_failed')
    expect(err.exitCode).toBe(3)
    expect(err.step).toBe('network.bridge')
    expect(err.message).toContain('no such bridge')
    expect(err.message).toContain('exited with code 3')
    expect(err.argv[0]).toBe('sh')
  })

  it('accepts listed exit codes', async () => {
    expect((await run('sh', ['-c', 'exit 2'], { okCodes: [0, 2] })).code).toBe(2)
  })

  it('reports a missing binary as tool_missing, naming it', async () => {
    const err = await run('/nonexistent/binary', []).catch((e) => e)
    expect(err).toBeInstanceOf(ToolMissingError)
    expect(err).toMatchObject({ code: 'tool_missing', field: '/nonexistent/binary' })
    expect(err.message).toMatch(/not installed/)
  })

  it('kills on timeout', async () => {
    const t0 = Date.now()
    const err = await run('sleep', ['10'], { timeoutMs: 200 }).catch((e) => e)
    expect(err.timedOut).toBe(true)
    expect(Date.now() - t0).toBeLessThan(5000)
  })

  it('parses JSON output', async () => {
    expect(await runJson('echo', ['{"a":[1,2]}'])).toEqual({ a: [1, 2] })
  })
})

describe('commandStream', () => {
  const collect = () => {
    const chunks: Buffer[] = []
    const sink = new Writable({
      write(c, _e, cb) {
        chunks.push(c)
        cb()
      },
    })
    return { sink, text: () => Buffer.concat(chunks).toString() }
  }

  it('streams through a command', async () => {
    const { sink, text } = collect()
    await pipeline(Readable.from([Buffer.from('abc\n'), Buffer.from('def\n')]), commandStream('tr', ['a-z', 'A-Z']), sink)
    expect(text()).toBe('ABC\nDEF\n')
  })

  it('errors instead of ending when the command fails', async () => {
    const { sink } = collect()
    const err = await pipeline(
      Readable.from([Buffer.from('not gzip data')]),
      commandStream('gzip', ['-dc']),
      sink,
    ).catch((e) => e)
    expect(err).toBeInstanceOf(CommandError)
    expect(err.message).toContain('gzip')
  })
})

describe('a program that is not installed', () => {
  it('is tool_missing naming the program and the package to install, from run and commandStream', async () => {
    const err = await run('mkfs.erofs-not-here', ['x']).catch((e) => e)
    expect(err).toBeInstanceOf(ToolMissingError)
    expect(err).toMatchObject({ code: 'tool_missing', field: 'mkfs.erofs-not-here' })
    const known = await run('nft', [], { env: { PATH: '/nonexistent' } }).catch((e) => e)
    expect(known).toMatchObject({ code: 'tool_missing', field: 'nft' })
    expect(known.message).toContain('apt-get install nftables')
    const stream = commandStream('zstd-not-here', ['-dc'])
    const streamErr = await new Promise((resolve) => stream.on('error', resolve).resume().end())
    expect(streamErr).toMatchObject({ code: 'tool_missing', field: 'zstd-not-here' })
  })

  it('a missing working directory is not a missing program', async () => {
    const err = await run('true', [], { cwd: '/nonexistent-dir' }).catch((e) => e)
    expect(err).toMatchObject({ code: 'command_failed' })
  })
})
