import { describe, expect, it } from 'vitest'
import { DEFAULT_PATH } from '../../src/guest/constants.js'
import { buildGuestEnv, resolveArgv, resolveProgram, type ImageRuntimeConfig, type ProgramOverrides } from '../../src/guest/program.js'

// Each row is what `docker run` runs for that image and those flags, per docker's documentation
// ("Understand how CMD and ENTRYPOINT interact", and `--entrypoint`: "Passing --entrypoint will
// clear out any default command set on the image"). The docker command is in the row's name.
const withBoth: ImageRuntimeConfig = { Entrypoint: ['/docker-entrypoint.sh'], Cmd: ['nginx', '-g', 'daemon off;'] }
const cmdOnly: ImageRuntimeConfig = { Cmd: ['/bin/sh'] }
const entrypointOnly: ImageRuntimeConfig = { Entrypoint: ['/usr/bin/redis-server'] }
const shellForm: ImageRuntimeConfig = { Entrypoint: ['/bin/sh', '-c', 'exec top -b'], Cmd: ['ignored'] }
const neither: ImageRuntimeConfig = {}

describe('Entrypoint/Cmd resolution matches docker run', () => {
  it.each<[string, ImageRuntimeConfig, ProgramOverrides, string[]]>([
    ['docker run img (ENTRYPOINT + CMD)', withBoth, {}, ['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;']],
    ['docker run img (CMD only)', cmdOnly, {}, ['/bin/sh']],
    ['docker run img (ENTRYPOINT only)', entrypointOnly, {}, ['/usr/bin/redis-server']],
    ['docker run img args (args replace CMD, keep ENTRYPOINT)', withBoth, { cmd: ['nginx-debug'] }, ['/docker-entrypoint.sh', 'nginx-debug']],
    ['docker run img args (CMD only image)', cmdOnly, { cmd: ['echo', 'hi'] }, ['echo', 'hi']],
    ['docker run img args (ENTRYPOINT only image: args appended)', entrypointOnly, { cmd: ['--port', '7000'] }, ['/usr/bin/redis-server', '--port', '7000']],
    ['docker run --entrypoint x img (resets image CMD)', withBoth, { entrypoint: ['/bin/sh'] }, ['/bin/sh']],
    ['docker run --entrypoint x img args', withBoth, { entrypoint: ['/bin/sh'], cmd: ['-c', 'id'] }, ['/bin/sh', '-c', 'id']],
    ['docker run --entrypoint x img (CMD only image)', cmdOnly, { entrypoint: ['env'] }, ['env']],
    ['docker run --entrypoint "" img args', withBoth, { entrypoint: [''], cmd: ['ls', '/'] }, ['ls', '/']],
    ['docker run --entrypoint "" (as []) img args', withBoth, { entrypoint: [], cmd: ['ls'] }, ['ls']],
    ['shell-form ENTRYPOINT ignores CMD args only through sh', shellForm, {}, ['/bin/sh', '-c', 'exec top -b', 'ignored']],
    ['docker run img with an explicit empty cmd = image CMD', withBoth, { cmd: [] }, ['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;']],
    ['null overrides behave as absent', withBoth, { entrypoint: null, cmd: null }, ['/docker-entrypoint.sh', 'nginx', '-g', 'daemon off;']],
    ['docker run img args (image without ENTRYPOINT or CMD)', neither, { cmd: ['sleep', '1'] }, ['sleep', '1']],
  ])('%s', (_name, image, params, argv) => {
    expect(resolveArgv(image, params)).toEqual(argv)
  })

  it.each<[string, ImageRuntimeConfig, ProgramOverrides, string]>([
    ['docker run img (no ENTRYPOINT, no CMD): "no command specified"', neither, {}, 'cmd'],
    ['docker run --entrypoint "" img (clears everything)', withBoth, { entrypoint: [''] }, 'cmd'],
    ['an empty program name', neither, { cmd: [''] }, 'cmd'],
    ['a non-array cmd', neither, { cmd: 'ls' as never }, 'cmd'],
    ['a non-string entrypoint element', neither, { entrypoint: [1] as never }, 'entrypoint'],
  ])('rejects %s, naming the field', (_name, image, params, field) => {
    expect(() => resolveArgv(image, params)).toThrowError(expect.objectContaining({ code: 'invalid_input', field }))
  })
})

describe('environment as docker builds it', () => {
  it('adds the default PATH when the image has none, and HOSTNAME', () => {
    expect(buildGuestEnv(['A=1'], {}, 'web')).toEqual({ PATH: DEFAULT_PATH, HOSTNAME: 'web', A: '1' })
  })

  it("keeps the image's PATH and order; caller values replace in place and new ones come last", () => {
    const env = buildGuestEnv(['PATH=/opt/bin', 'A=1', 'B=2'], { A: 'x', C: '3' })
    expect(Object.entries(env)).toEqual([['PATH', '/opt/bin'], ['A', 'x'], ['B', '2'], ['C', '3']])
  })

  it('lets the image or the caller override HOSTNAME, keeps values with "=" whole, drops entries without "="', () => {
    expect(buildGuestEnv(['HOSTNAME=img', 'Q=a=b', 'BROKEN'], { HOSTNAME: 'mine' }, 'web')).toEqual({ PATH: DEFAULT_PATH, HOSTNAME: 'mine', Q: 'a=b' })
  })

  it.each([['A=B'], [''], ['X\0']])('rejects the env name %j, naming it', (name) => {
    expect(() => buildGuestEnv([], { [name]: 'v' })).toThrowError(expect.objectContaining({ code: 'invalid_input', field: `env.${name}` }))
  })

  it('resolves the whole program with workdir and user from the image', () => {
    expect(resolveProgram({ Cmd: ['id'], WorkingDir: '/app', User: '1000:1000', Env: ['PATH=/bin'] }, { env: { X: 'y' } }, 'h1')).toEqual({
      argv: ['id'],
      env: { PATH: '/bin', HOSTNAME: 'h1', X: 'y' },
      workdir: '/app',
      user: '1000:1000',
    })
    expect(resolveProgram({ Cmd: ['id'] })).toMatchObject({ workdir: '/', user: '' })
  })
})
