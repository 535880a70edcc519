"""imsaka.diameter: Diameter base protocol (RFC 6733, RFC 3539 watchdog) and the Cx
application (TS 29.228 / TS 29.229).

- `codec`: the one adapter over python-diameter (dictionary, corrected Cx commands),
  strict framing and the fast AVP codec;
- `cx`: frozen Cx events (UAR/UAA, MAR/MAA, SAR/SAA, LIR/LIA, RTR/RTA, PPR/PPA), result
  codes and enumerations;
- `peer`: the sans-I/O peer connection (RFC 6733 §5.6 state table);
- `node`: `DiameterNode`, the asyncio edge (server and client);
- `loadgen`: fixed-MAA server and MAR load for benchmarks.
"""
