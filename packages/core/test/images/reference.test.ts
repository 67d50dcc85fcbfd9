import { describe, expect, it } from 'vitest'
import { ValidationError } from '@hypeman-ts/common'
import { formatReference, isLoopbackRegistry, parseReference } from '../../src/images/reference.js'

const D = `sha256:${'a'.repeat(64)}`

describe('parseReference', () => {
  it.each([
    ['alpine', 'docker.io/library/alpine:latest'],
    ['alpine:3.20', 'docker.io/library/alpine:3.20'],
    ['library/alpine', 'docker.io/library/alpine:latest'],
    ['user/app', 'docker.io/user/app:latest'],
    ['docker.io/alpine', 'docker.io/library/alpine:latest'],
    ['index.docker.io/library/alpine:edge', 'docker.io/library/alpine:edge'],
    ['localhost/app', 'localhost/app:latest'],
    ['localhost:5000/app:v1', 'localhost:5000/app:v1'],
    ['127.0.0.1:5000/team/app', '127.0.0.1:5000/team/app:latest'],
    ['ghcr.io/org/sub/app:1.0', 'ghcr.io/org/sub/app:1.0'],
    [`alpine@${D}`, `docker.io/library/alpine@${D}`],
    [`alpine:3.20@${D}`, `docker.io/library/alpine:3.20@${D}`],
    [`localhost:5000/app:v1@${D}`, `localhost:5000/app:v1@${D}`],
    ['registry.example.com:8443/a/b', 'registry.example.com:8443/a/b:latest'],
    ['my_app', 'docker.io/library/my_app:latest'],
    ['a__b--c.d', 'docker.io/library/a__b--c.d:latest'],
    ['oci:/var/lib/layout', 'oci:/var/lib/layout:latest'],
    ['oci:/var/lib/layout:v2', 'oci:/var/lib/layout:v2'],
    [`oci:/var/lib/layout:${D}`, `oci:/var/lib/layout:${D}`],
  ])('%s → %s', (input, want) => {
    expect(formatReference(parseReference(input))).toBe(want)
  })

  it('keeps the parts apart', () => {
    expect(parseReference(`localhost:5000/team/app:v1@${D}`)).toEqual({
      kind: 'registry',
      registry: 'localhost:5000',
      repository: 'team/app',
      tag: 'v1',
      digest: D,
    })
  })

  it.each([
    ['', /required/],
    ['Alpine', /lowercase/],
    ['docker.io/User/app', /lowercase/],
    ['alpine:', /not a valid tag/],
    ['alpine:-bad', /not a valid tag/],
    ['alpine@sha256:abc', /not a valid digest/],
    ['alpine@md5:' + 'a'.repeat(32), /not a valid digest/],
    ['a//b', /not a valid image reference/],
    ['-app', /not a valid image reference/],
    ['app-', /not a valid image reference/],
    ['oci:relative/path', /absolute/],
    ['x/' + 'a'.repeat(300), /longer than 255|too long/],
  ])('rejects %j', (input, why) => {
    let err: unknown
    try {
      parseReference(input, 'image')
    } catch (e) {
      err = e
    }
    expect(err).toBeInstanceOf(ValidationError)
    expect((err as ValidationError).field).toBe('image')
    expect((err as Error).message).toMatch(why)
  })

  it('treats loopback registries as plain-HTTP candidates', () => {
    expect(isLoopbackRegistry('localhost:5000')).toBe(true)
    expect(isLoopbackRegistry('127.0.0.1:41234')).toBe(true)
    expect(isLoopbackRegistry('[::1]:5000')).toBe(true)
    expect(isLoopbackRegistry('docker.io')).toBe(false)
    expect(isLoopbackRegistry('127.example.com')).toBe(false)
  })
})
