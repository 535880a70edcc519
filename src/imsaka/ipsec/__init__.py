"""imsaka.ipsec"""
