"""imsaka: an IMS core network and UE simulator doing IMS AKA registration with IPsec ESP.

Specifications: 3GPP TS 33.203, TS 24.229, TS 24.228, TS 33.102, TS 29.228/29.229;
RFC 3261, 3310, 3329, 4169, 4303, 6733.
"""

__version__ = "0.1.0"
