"""imsaka.sip"""
