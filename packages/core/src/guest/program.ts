/**
 * What to run and with which environment, exactly as `docker run` decides it from the image config
 * and the create params. Pure; table-tested against docker's documented behaviour.
 *
 * Entrypoint/Cmd (docs: "ENTRYPOINT" and "Understand how CMD and ENTRYPOINT interact"; `docker run
 * --entrypoint`: "Passing --entrypoint will clear out any default command set on the image"):
 *
 * | params                         | program                                   |
 * |--------------------------------|-------------------------------------------|
 * | neither                        | image Entrypoint + image Cmd              |
 * | cmd                            | image Entrypoint + cmd                    |
 * | entrypoint                     | entrypoint (image Cmd dropped)            |
 * | entrypoint + cmd               | entrypoint + cmd                          |
 * | entrypoint: [] or [""]         | cmd, or nothing (`--entrypoint ""`)       |
 * | cmd: []                        | as if cmd were not given (docker's merge) |
 *
 * An empty result is docker's "no command specified" error.
 */
import { ValidationError } from '@hypeman-ts/common'
import { DEFAULT_PATH } from './constants.js'

/** The parts of an OCI image config (`config` in the image config JSON) that shape the program. */
export interface ImageRuntimeConfig {
  Entrypoint?: string[] | null
  Cmd?: string[] | null
  Env?: string[] | null
  WorkingDir?: string
  User?: string
}

export interface ProgramOverrides {
  entrypoint?: string[] | null
  cmd?: string[] | null
  env?: Record<string, string> | null
}

export interface ResolvedProgram {
  argv: string[]
  env: Record<string, string>
  workdir: string
  user: string
}

const isCleared = (ep: string[]) => ep.length === 0 || (ep.length === 1 && ep[0] === '')

/** Entrypoint + Cmd → argv, with docker's override rules. */
export function resolveArgv(image: Pick<ImageRuntimeConfig, 'Entrypoint' | 'Cmd'>, params: Pick<ProgramOverrides, 'entrypoint' | 'cmd'>): string[] {
  for (const field of ['entrypoint', 'cmd'] as const) {
    const v = params[field]
    if (v !== undefined && v !== null && (!Array.isArray(v) || v.some((a) => typeof a !== 'string'))) {
      throw new ValidationError(field, 'must be an array of strings')
    }
  }
  let argv: string[]
  if (params.entrypoint !== undefined && params.entrypoint !== null) {
    const ep = isCleared(params.entrypoint) ? [] : params.entrypoint
    argv = [...ep, ...(params.cmd ?? [])]
  } else {
    const cmd = params.cmd && params.cmd.length > 0 ? params.cmd : (image.Cmd ?? [])
    argv = [...(image.Entrypoint ?? []), ...cmd]
  }
  if (argv.length === 0) throw new ValidationError('cmd', 'no command specified: the image has no Entrypoint or Cmd and none was given')
  if (argv[0] === '') throw new ValidationError(params.entrypoint ? 'entrypoint' : 'cmd', 'the program name is empty')
  return argv
}

const ENV_NAME = /^[^=\0]+$/

/**
 * docker's environment: PATH (when the image sets none) and HOSTNAME first, then the image's Env,
 * then the caller's, each replacing an earlier value of the same name in place. HOME is added by
 * the guest from /etc/passwd when still unset, as runc does.
 */
export function buildGuestEnv(imageEnv: readonly string[] | null | undefined, overrides: Record<string, string> | null | undefined, hostname?: string): Record<string, string> {
  const env: Record<string, string> = {}
  const image = imageEnv ?? []
  if (!image.some((e) => e.startsWith('PATH='))) env.PATH = DEFAULT_PATH
  if (hostname) env.HOSTNAME = hostname
  for (const entry of image) {
    const eq = entry.indexOf('=')
    // An image Env entry without "=" has no value to pass (docker drops it too).
    if (eq <= 0) continue
    env[entry.slice(0, eq)] = entry.slice(eq + 1)
  }
  for (const [name, value] of Object.entries(overrides ?? {})) {
    if (!ENV_NAME.test(name)) throw new ValidationError(`env.${name}`, 'environment variable names must be non-empty and contain no "=" or NUL')
    if (typeof value !== 'string') throw new ValidationError(`env.${name}`, 'must be a string')
    if (value.includes('\0')) throw new ValidationError(`env.${name}`, 'must not contain NUL bytes')
    env[name] = value
  }
  return env
}

/** argv, env, working dir and user for the config disk, from the image config and the create params. */
export function resolveProgram(image: ImageRuntimeConfig, params: ProgramOverrides = {}, hostname?: string): ResolvedProgram {
  return {
    argv: resolveArgv(image, params),
    env: buildGuestEnv(image.Env, params.env, hostname),
    workdir: image.WorkingDir || '/',
    user: image.User ?? '',
  }
}
