import { describe, expect, it } from 'vitest'
import { parseCommandLine, parseListen } from '../src/command-line.js'

describe('parseCommandLine', () => {
  it('serves on 127.0.0.1:4973 with the manager network by default, metrics off', () => {
    expect(parseCommandLine(['serve'])).toEqual({
      command: 'serve',
      listen: { host: '127.0.0.1', port: 4973 },
      hypeman: { network: {} },
      server: { logger: false, allowLocalLayouts: false, metrics: false },
    })
  })

  it('maps every network, egress and server flag to the manager and server options', () => {
    const cmd = parseCommandLine([
      'serve', '--listen', '0.0.0.0:8080', '--data-dir', '/srv/hm', '--jwt-secret-file', '/etc/s',
      '--subnet', '10.9.0.0/16', '--uplink', 'eth1', '--dns', '1.1.1.1', '--dns', '9.9.9.9',
      '--capacity-download', '1Gbps', '--capacity-upload', '500Mbps',
      '--egress-port-explicit', '3128', '--egress-port-transparent', '3129',
      '--egress-allow-destination', '172.20.0.0/16', '--egress-allow-port', '8443', '--egress-allow-port', '443',
      '--egress-allow-host-service', '10.9.0.1:8200',
      '--allow-oci-layouts', '--body-limit', '2048', '--metrics-listen', '[::1]:9464', '--log',
    ])
    expect(cmd).toEqual({
      command: 'serve',
      secretFile: '/etc/s',
      listen: { host: '0.0.0.0', port: 8080 },
      metricsListen: { host: '::1', port: 9464 },
      hypeman: {
        dataDir: '/srv/hm',
        network: { subnet: '10.9.0.0/16', uplink: 'eth1', dns: ['1.1.1.1', '9.9.9.9'], capacity: { download: '1Gbps', upload: '500Mbps' } },
        egress: { ports: { explicit: 3128, transparent: 3129 }, allowDestinations: ['172.20.0.0/16'], allowPorts: [8443, 443], allowHostServices: ['10.9.0.1:8200'] },
      },
      server: { logger: true, allowLocalLayouts: true, metrics: true, bodyLimit: 2048, networkCapacity: { downloadBitsPerSec: 1e9 } },
    })
  })

  it('turns the network off with --no-network', () => {
    expect(parseCommandLine(['serve', '--no-network'])).toMatchObject({ hypeman: { network: false } })
    expect(parseCommandLine(['serve', '--no-volume-hotplug'])).toMatchObject({ hypeman: { volumeHotplug: false } })
    expect(parseCommandLine(['serve'])).not.toMatchObject({ hypeman: { volumeHotplug: false } })
  })

  it('reads token options', () => {
    expect(parseCommandLine(['token', '--subject', 'ci', '--ttl', '2h'])).toEqual({ command: 'token', subject: 'ci', ttlSeconds: 7200 })
  })

  it('says usage for no command, an unknown one, or two', () => {
    for (const argv of [[], ['run'], ['serve', 'token']]) expect(parseCommandLine(argv)).toEqual({ command: 'usage' })
    expect(parseCommandLine(['serve', '-h'])).toEqual({ command: 'help' })
  })

  it.each([
    [['serve', '--listen', 'localhost'], 'listen'],
    [['serve', '--listen', '127.0.0.1:70000'], 'listen'],
    [['serve', '--metrics-listen', ':x'], 'metrics-listen'],
    [['serve', '--body-limit', '1.5'], 'body-limit'],
    [['serve', '--egress-allow-port', '0'], 'egress-allow-port'],
    [['serve', '--capacity-download', 'fast'], 'capacity-download'],
    [['token', '--ttl', 'soon'], 'ttl'],
  ])('refuses %j naming %s', (argv, field) => {
    expect(() => parseCommandLine(argv)).toThrow(expect.objectContaining({ code: 'invalid_input', field }))
  })

  it('takes an empty host as the loopback default', () => {
    expect(parseListen(':4973')).toEqual({ host: '127.0.0.1', port: 4973 })
  })
})
