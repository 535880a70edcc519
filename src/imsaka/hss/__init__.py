"""imsaka.hss"""
